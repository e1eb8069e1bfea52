"""Atomic, verified, pickle-free adapter files in PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`).

`PeftModel.save_pretrained` writes in place and `PeftModel.from_pretrained` falls back to pickle files; these
functions write a whole adapter directory atomically (`atomic.replace_directory`: a temporary sibling swapped in by
renames, so a kill leaves the old or the new version, never a mix) and read safetensors only, with errors that name
the file.

Every safetensors file written here carries a sha256 of its tensors (names, dtypes, shapes and bytes) in its
metadata under `peft_inits.sha256`; `load_tensors` recomputes it, so a flipped byte, an edited header (e.g. a dtype
changed from F32 to I32) or a file spliced from two saves is refused. Files without that key (written by PEFT
itself, other tools or earlier peft_inits 0.1 builds) still load, unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import PeftModel, get_peft_model_state_dict
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .atomic import atomic_write, recover_directory, replace_directory
from .registry import method_of_peft_type, methods

if TYPE_CHECKING:
    from .config import AdapterConfig

__all__ = [
    "CHECKSUM_KEY",
    "atomic_write",
    "load_adapter",
    "load_tensors",
    "read_config",
    "read_config_json",
    "read_tensors",
    "save_adapter",
    "save_tensors",
    "tensor_checksum",
    "verify_adapter_dir",
    "write_adapter_dir",
]

CHECKSUM_KEY = "peft_inits.sha256"


def tensor_checksum(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (independent of the file layout)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        flat = tensor.cpu().reshape(-1)
        if flat.numel() and flat.stride(0) != 1:  # e.g. one element sliced out of a row: "contiguous", stride ≠ 1
            flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
        data = flat.view(torch.uint8)
        digest.update(
            f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0{data.numel()}\0".encode()
        )
        digest.update(memoryview(data.numpy()))
    return digest.hexdigest()


def non_finite(tensors: Mapping[str, Tensor]) -> dict[str, int]:
    """Floating tensors holding NaN/inf → how many such values."""
    counts = {}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                counts[name] = bad
    return counts


def _describe(counts: dict[str, int]) -> str:
    shown = ", ".join(f"{name} ({n})" for name, n in list(counts.items())[:3])
    return shown + (f" and {len(counts) - 3} more" if len(counts) > 3 else "")


def save_tensors(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file whose metadata carries the tensors' checksum."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {**(metadata or {}), CHECKSUM_KEY: tensor_checksum(contiguous)}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def read_tensors(path: str | os.PathLike, *, finite: bool = False) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, verified against its checksum when it has one.

    A missing, corrupt, truncated or altered file gets an error naming it; `finite` also refuses NaN/inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"file {path} is corrupt or truncated ({exc}); nothing was loaded") from exc
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and tensor_checksum(tensors) != expected:
        raise ValueError(
            f"file {path} is damaged: its tensors do not match the checksum written with them (a changed byte, an "
            f"edited header or a partial copy); nothing was loaded"
        )
    if finite and (counts := non_finite(tensors)):
        raise ValueError(f"file {path} holds non-finite values (NaN/inf) in {_describe(counts)}; nothing was loaded")
    return tensors, metadata


def load_tensors(path: str | os.PathLike, *, finite: bool = False) -> dict[str, Tensor]:
    """Read a safetensors file (see `read_tensors`); a missing, corrupt or truncated file gets an error naming it."""
    return read_tensors(path, finite=finite)[0]


def write_adapter_dir(
    directory: str | os.PathLike,
    tensors: dict[str, Tensor],
    config: dict[str, Any],
    *,
    metadata: dict[str, str] | None = None,
    texts: dict[str, str] | None = None,
) -> Path:
    """Atomically (re)write an adapter directory: config + checksummed weights (+ extra safetensors `metadata` and
    text files such as a README.md), swapped in as a whole.

    Files of the previous version that this one does not write (e.g. a user's `meta.json`) are kept. Tensors holding
    NaN/inf are refused before anything is written.
    """
    if counts := non_finite(tensors):
        raise ValueError(f"the adapter for {directory} holds non-finite values in {_describe(counts)}; not saved")
    payload = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"format": "pt", **(metadata or {}), CHECKSUM_KEY: tensor_checksum(contiguous)}
    with replace_directory(directory) as tmp:
        save_file(contiguous, str(tmp / SAFETENSORS_WEIGHTS_NAME), metadata=metadata)
        (tmp / CONFIG_NAME).write_text(text)
        for name, content in (texts or {}).items():
            (tmp / name).write_text(content)
    return Path(directory)


def save_adapter(model: PeftModel, directory: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Save one adapter atomically in the layout `PeftModel.from_pretrained` reads. Returns the directory.

    A kill at any moment leaves the previous version or this one, never a mix; an adapter holding NaN/inf is
    refused before anything is written.
    """
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return write_adapter_dir(directory, state, model.peft_config[adapter_name].to_dict())


def _inside(directory: Path, name: str) -> Path:
    """`directory / name`, refusing a symlink that leads out of the directory."""
    path = directory / name
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(directory.resolve()):
            raise ValueError(
                f"{path} is a symlink to {target}, outside the adapter directory; refusing to follow it "
                f"(copy the file into the directory instead)"
            )
    return path


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; unreadable or other JSON gets an error naming the file and `what`."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable {what} ({exc}); the file is damaged") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object ({what}), not a JSON {type(raw).__name__}")
    return raw


def read_config_json(directory: str | os.PathLike) -> dict[str, Any]:
    """The raw `adapter_config.json` of `directory`, checked to be a JSON object with sane `peft_type` and
    `format_version` fields (any adapter type, PEFT's own included)."""
    directory = Path(directory)
    path = _inside(directory, CONFIG_NAME)
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; is it an adapter directory?")
    raw = read_json_object(path, "adapter config")
    if not isinstance(raw.get("peft_type"), str):
        raise ValueError(f"{path} has no string 'peft_type' field (found {raw.get('peft_type')!r})")
    version = raw.get("format_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ValueError(f"{path}: format_version must be an integer, not {version!r}")
    return raw


def read_config(directory: str | os.PathLike) -> AdapterConfig:
    """The peft_inits config saved in `directory` (fields from a newer release are refused, not dropped). The
    directory's weights are not read here: callers that load them verify it (`verify_adapter_dir`)."""
    path = Path(directory) / CONFIG_NAME
    peft_type = read_config_json(directory)["peft_type"]
    method = method_of_peft_type(peft_type)
    if method is None:
        known = sorted(m.peft_type for m in methods())
        raise ValueError(f"{path} holds a {peft_type!r} adapter; peft_inits reads {known}")
    return method.config.from_pretrained(str(directory), verify=False)


def verify_adapter_dir(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Check an adapter directory without touching any model: the config is a sane JSON object, neither file is a
    symlink leading outside the directory, and the weights load, match their checksum and are finite.

    Returns (raw config, tensors). A directory whose save was interrupted mid-swap is restored first.
    """
    directory = Path(directory)
    recover_directory(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory {directory} does not exist")
    config = read_config_json(directory)
    weights = _inside(directory, SAFETENSORS_WEIGHTS_NAME)
    if not weights.is_file():
        raise FileNotFoundError(f"adapter file {weights} does not exist (only safetensors weights are read)")
    return config, load_tensors(weights, finite=True)


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False
) -> PeftModel:
    """Load an adapter saved by `save_adapter` or `save_pretrained` onto `model`, reading safetensors only.

    The directory is verified (`verify_adapter_dir`) before the model is touched, and SVFit/LoLDU layers check the
    base-weight fingerprint while loading, so a file made for another base model is refused with a clear error.
    """
    verify_adapter_dir(directory)  # restores an interrupted swap, names a missing directory
    config = read_config(directory)
    return PeftModel.from_pretrained(
        model, str(directory), adapter_name=adapter_name, is_trainable=is_trainable, config=config
    )


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-[A-Za-z0-9_]+")


def adapter_dirs(root: str | Path) -> list[Path]:
    """Every directory under `root` holding an `adapter_config.json`, sorted.

    Leftovers of interrupted saves (`.<name>.tmp-*`, `.<name>.old-*`) are not adapters; an adapter whose save was
    interrupted mid-swap is restored from its set-aside previous version first.
    """
    root = Path(root)
    found = set()
    for config in list(root.rglob("adapter_config.json")):  # listed first: recovery renames folders
        directory = config.parent
        leftover = next((m for part in directory.relative_to(root).parts if (m := _LEFTOVER.fullmatch(part))), None)
        if leftover is None:
            found.add(directory)
        elif directory.name.startswith(f".{leftover['name']}.old-"):
            target = directory.parent / leftover["name"]
            if recover_directory(target):
                found.add(target)
    return sorted(found)
