"""Atomic, pickle-free adapter files in PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`).

`PeftModel.save_pretrained` writes in place and `PeftModel.from_pretrained` falls back to pickle files; these two
functions write through a temporary file + rename and read safetensors only, with errors that name the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peft import PeftModel, get_peft_model_state_dict
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import AdapterConfig
from .registry import method_of_peft_type, methods


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Run `write(tmp_path)` and rename the result over `path`, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def load_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a safetensors file; a missing, corrupt or truncated file gets an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"adapter file {path} is corrupt or truncated ({exc}); nothing was loaded") from exc


def save_adapter(model: PeftModel, directory: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Save one adapter atomically in the layout `PeftModel.from_pretrained` reads. Returns the directory."""
    directory = Path(directory)
    config = model.peft_config[adapter_name]
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    save_tensors(state, directory / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})
    payload: dict[str, Any] = config.to_dict()
    payload = {k: (sorted(v) if isinstance(v, set) else v) for k, v in payload.items()}
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False
) -> PeftModel:
    """Load an adapter saved by `save_adapter` or `save_pretrained` onto `model`, reading safetensors only.

    The weights file is validated before the model is touched, and SVFit/LoLDU layers check the base-weight
    fingerprint while loading, so a file made for another base model is refused with a clear error.
    """
    directory = Path(directory)
    weights = directory / SAFETENSORS_WEIGHTS_NAME
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; is it an adapter directory?")
    load_tensors(weights)
    config = read_config(directory)
    return PeftModel.from_pretrained(
        model, str(directory), adapter_name=adapter_name, is_trainable=is_trainable, config=config
    )


def read_config(directory: str | os.PathLike) -> AdapterConfig:
    """The peft_inits config saved in `directory` (fields from a newer release are refused, not dropped)."""
    path = Path(directory) / CONFIG_NAME
    try:
        peft_type = json.loads(path.read_text()).get("peft_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable adapter config ({exc})") from exc
    method = method_of_peft_type(peft_type)
    if method is None:
        known = sorted(m.peft_type for m in methods())
        raise ValueError(f"{path} holds a {peft_type!r} adapter; peft_inits reads {known}")
    return method.config.from_pretrained(str(directory))
