"""An adapter data set distilled from a hypernetwork (issue 22, item 6): DiffLoRA's diffusion generator given the
hypernetwork's advantage.

The diffusion generator learns the distribution of a data set's stored adapters; trained per subject with noisy
DreamBooth runs, those adapters scatter around what the subject needs (retrieval of the nearest one beats the
generator). The distilled data set replaces every *training* adapter by the end-to-end hypernetwork's prediction from
the same references — noise-free, smooth in the references by construction — and keeps the held-out adapters (the
evaluation's trained row and weight-space target) and the references unchanged. `train-generator` then learns it
like any data set:

    sd distill-hypernetwork --hypernetwork runs/hyper-svfit-s0 --dataset runs/data/adapters-svfit \
        --output-dir runs/data/adapters-svfit-distilled
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from ..atomic import replace_directory
from . import dataset as D
from . import features as feats
from .entries import training_data
from .hypernetwork_run import load_hypernetwork
from .workflow import check_base, load_base


def distill_dataset(
    hypernetwork: str | Path, dataset: str | Path, output_dir: str | Path, *, cache_dir: str | None = None
) -> D.AdapterDataset:
    """Write the distilled copy of `dataset` into `output_dir` (atomically: a refused or failed run writes nothing).

    Refused: a hypernetwork of another method or base, held-out subjects among its training subjects, an existing
    `output_dir`."""
    run = load_hypernetwork(hypernetwork)
    data = training_data(dataset)
    out = Path(output_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; distill into a new folder")
    if data.method and data.method != run.method:
        raise ValueError(f"hypernetwork {run.root} predicts {run.method} adapters but {data.root} holds {data.method}")
    leaked = sorted({e.subject_id for e in data.entries("heldout")} & set(run.meta["train_subjects"]))
    if leaked:
        raise ValueError(f"held-out subjects {leaked[:5]} of {data.root} are among hypernetwork {run.root}'s "
                         "training subjects: the distilled data set would leak them")  # fmt: skip
    recorded = run.choice
    base = load_base(data.model or run.meta.get("model"), cache_dir or recorded.cache_dir or "runs/cache")
    check_base(base.unet, run.layout, run.template, f"hypernetwork {run.root}")
    sources = recorded.build(base)
    entries = []
    with replace_directory(out) as tmp:
        shutil.copytree(Path(data.root) / "references", tmp / "references")
        for entry in data.adapters:
            if entry.split == "heldout":
                shutil.copytree(entry.directory, tmp / "adapters" / entry.name)
                entries.append(replace(entry, root=tmp))
                continue
            began = time.perf_counter()
            condition = feats.condition(sources, feats.read_references(entry.references_dir))
            state = run.states({k: v[None] for k, v in condition.items()})[0]
            run.write(state, tmp / "adapters" / entry.name, {"distilled_from": str(run.root), "entry": entry.name})
            seconds = time.perf_counter() - began
            entries.append(replace(entry, root=tmp, train_time_s=seconds, final_loss=None, eval_loss_end=None))
        settings = {**data.settings, "distilled_from": {"hypernetwork": str(run.root), "dataset": str(data.root)}}
        distilled = D.AdapterDataset(data.method or run.method, data.model, settings, entries)
        (tmp / D.MANIFEST).write_text(json.dumps(distilled.to_json(), indent=2, ensure_ascii=False) + "\n")
    return D.read_dataset(out)
