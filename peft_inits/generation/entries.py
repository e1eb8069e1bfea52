"""An adapter data set (`dataset.json` + `adapters/<name>/` + `references/<subject_id>/`) as a generator reads it.

    DIR/dataset.json   {"method", "model", "settings", "adapters": [{"name", "subject", "subject_id", "split",
                        "seed", "references", "train_time_s"}, ...]}
    DIR/adapters/<name>/            a normal adapter directory
    DIR/references/<subject_id>/    the subject's reference images

Every adapter is verified (config, checksum, finiteness); all must be of one method and one config (run-specific keys
such as the seed aside), or the data set is refused with the two adapters that differ named.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ..checkpoint import verify_adapter_dir
from ..registry import method_of_peft_type
from . import dataset as D

WRAPPER_PREFIX = "base_model.model."  # what a PeftModel's save adds; diffusers' add_adapter saves without it
_RUN_SPECIFIC = ("seed", "base_model_name_or_path", "revision", "inference_mode")


def training_data(root: str | Path) -> D.AdapterDataset:
    """The data set in `root` (`dataset.read_dataset`), refused when it lists no adapter: a generator learns from
    them."""
    dataset = D.read_dataset(root)
    if not dataset.adapters:
        raise ValueError(f"{Path(root) / D.MANIFEST} lists no adapters (an 'adapters' list of objects is needed)")
    return dataset


def load_entries(
    dataset: D.AdapterDataset, entries: Sequence[D.DatasetEntry]
) -> tuple[dict[str, Any], list[dict[str, Tensor]]]:
    """(the shared config, each adapter's verified tensors); mixed methods or configs are an error naming both."""
    first_config: dict[str, Any] | None = None
    first: D.DatasetEntry | None = None
    states = []
    for entry in entries:
        if not entry.directory.is_dir():
            raise FileNotFoundError(f"adapter {entry.name!r} of {dataset.root}: {entry.directory} does not exist")
        config, tensors = verify_adapter_dir(entry.directory)
        method = method_of_peft_type(config.get("peft_type"))
        name = method.name if method is not None else str(config.get("peft_type"))
        if dataset.method and name != dataset.method:
            raise ValueError(
                f"{dataset.root} mixes methods: dataset.json says {dataset.method!r} but {entry.directory} holds a "
                f"{name!r} adapter; a generator learns one method's adapters"
            )
        shared = {k: v for k, v in config.items() if k not in _RUN_SPECIFIC}
        if first_config is None:
            first_config, first = shared, entry
            dataset.method = dataset.method or name
        elif shared != first_config:
            assert first is not None
            differing = sorted(k for k in set(shared) | set(first_config) if shared.get(k) != first_config.get(k))
            what = "methods" if "peft_type" in differing else f"adapter configs ({', '.join(differing[:4])})"
            raise ValueError(
                f"{dataset.root} mixes {what}: {first.directory} and {entry.directory} differ; a generator learns "
                "adapters of one method and config"
            )
        states.append({key.removeprefix(WRAPPER_PREFIX): value for key, value in tensors.items()})
    assert first is not None
    config, _ = verify_adapter_dir(first.directory)
    return config, states


def reference_images(entry: D.DatasetEntry) -> list:
    """The subject's reference images (an empty or unreadable folder is an error naming it or the file)."""
    from .features import read_references

    return read_references(entry.references_dir)
