"""A finished hypernetwork run, loaded back, and the zero-shot adapter it writes for a subject's references.

The adapter directory is the one `generate-adapter` writes for a diffusion generator: `PeftModel.save_pretrained`'s
layout, the base fingerprints of the template (so it loads only on the base it was trained for), checksummed,
`generated.json` saying how it was made; it loads with `PeftModel.from_pretrained` and exports with `sd.py export`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import load_tensors, read_json_object, write_adapter_dir
from . import features as feats
from .entries import WRAPPER_PREFIX
from .hypernetwork import HypernetSettings, Hypernetwork, OutputBasis, Slots, basis_digest
from .hypernetwork_training import FORMAT, META
from .representation import LayerLayout, layout_from_json
from .workflow import FeatureChoice, RecordedRun, check_base, load_base


@dataclass
class HypernetworkRun(RecordedRun):
    layout: list[LayerLayout]
    net: Hypernetwork
    keys: list[str]
    template: dict[str, Tensor]

    @torch.no_grad()
    def states(self, conditions: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
        """A complete saved state (the template with every trained tensor predicted) per row of raw `conditions`."""
        return [self.state_of(row) for row in self.net(conditions)]

    def state_of(self, values: Tensor) -> dict[str, Tensor]:
        """The template with its trained tensors set from one vector of values (P,), in the slots' order."""
        state = dict(self.template)
        parts = self.net.slots.split(values[None])
        for name, key in zip(self.net.slots.names, self.keys, strict=True):
            state[key] = parts[name][0].to(self.template[key].dtype).contiguous()
        return state

    def write(self, state: Mapping[str, Tensor], out: str | Path, info: Mapping[str, Any]) -> Path:
        """A normal adapter directory (PEFT layout, checksummed) plus `generated.json`."""
        text = json.dumps(dict(info), indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n"
        tensors = {f"{WRAPPER_PREFIX}{key}": value for key, value in state.items()}
        return write_adapter_dir(out, tensors, self.meta["adapter_config"], texts={"generated.json": text})


def is_hypernetwork_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / META).is_file()


def load_hypernetwork(run_dir: str | Path) -> HypernetworkRun:
    """A finished hypernetwork run (an unfinished or foreign folder is an error saying what is missing)."""
    root = Path(run_dir)
    path = root / META
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not a finished hypernetwork run ({path} does not exist); train one with "
            "sd.py train-hypernetwork"
        )
    meta = read_json_object(path, "hypernetwork description")
    if meta.get("format") != FORMAT or meta.get("kind") != "hypernetwork":
        raise ValueError(f"{path} is format {meta.get('format')!r} / {meta.get('kind')!r}; this peft_inits reads "
                         f"hypernetwork format {FORMAT}")  # fmt: skip
    names, shapes, keys = zip(*[(n, tuple(s), k) for n, s, k in meta["slots"]], strict=True)
    size = sum(int(torch.Size(s).numel()) for s in shapes)
    slots = Slots(tuple(names), tuple(shapes), torch.zeros(size))
    recorded = meta.get("basis")
    basis = OutputBasis(torch.zeros(int(recorded["size"]), size), torch.zeros(size)) if recorded else None
    net = Hypernetwork(meta["feature_dims"], slots, None, HypernetSettings(**meta["hypernetwork"]), basis)
    net.load_state_dict(load_tensors(root / "weights" / "model.safetensors"))
    if recorded and basis_digest(net.basis, net.shift) != recorded.get("digest"):
        raise ValueError(f"{root / 'weights' / 'model.safetensors'}: its output basis is not the one "
                         f"{path} records (digest mismatch); the run folder is inconsistent")  # fmt: skip
    template = load_tensors(root / "template.safetensors")
    missing = [k for k in keys if k not in template]
    if missing:
        raise ValueError(f"{root / 'template.safetensors'} lacks {missing[:3]}: it does not belong to this run")
    return HypernetworkRun(root, meta, layout_from_json(meta["layout"]), net.eval(), list(keys), template)


def generate_adapter(
    run_dir: str | Path,
    references: str | Path,
    out: str | Path,
    *,
    method: str | None = None,
    model: str | None = None,
    judge: str | None = None,
    image_encoder: str | None = None,
) -> dict[str, Any]:
    """Write the adapter the hypernetwork predicts for the subject of `references`; returns what was done and
    timings. Bad references, another method or another base are errors before anything is written."""
    started = time.perf_counter()
    images = feats.read_references(references)  # bad references fail before anything heavy loads
    run = load_hypernetwork(run_dir)
    if method is not None and method != run.method:
        raise ValueError(f"hypernetwork {run.root} predicts {run.method} adapters, not {method}; use --method "
                         f"{run.method} or a hypernetwork trained for {method}")  # fmt: skip
    model = model if model is not None else run.meta.get("model")
    recorded = run.choice
    base = load_base(model, recorded.cache_dir or "runs/cache")
    check_base(base.unet, run.layout, run.template, f"hypernetwork {run.root}")
    choice = FeatureChoice(recorded.sources, judge or recorded.judge, recorded.cache_dir,
                           image_encoder or recorded.image_encoder)  # fmt: skip
    sources = choice.build(base)
    loaded = time.perf_counter()
    conditions = {k: v[None] for k, v in feats.condition(sources, images).items()}
    state = run.states(conditions)[0]
    info = {
        "hypernetwork": str(Path(run_dir)),
        "references": str(Path(references)),
        "images": len(images),
        "method": run.method,
        "model": model,
        "features": list(choice.sources),
    }
    directory = run.write(state, out, info)
    done = time.perf_counter()
    return {**info, "out": str(directory), "load_s": loaded - started, "generate_s": done - loaded,
            "wall_s": done - started}  # fmt: skip
