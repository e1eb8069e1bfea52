"""Drop-in PEFT configs: `LoRAConfig`, `SVFitConfig`, `LoLDUConfig`.

Each is a `peft.PeftConfig` dataclass, so `peft.get_peft_model(model, SVFitConfig(...))`, `save_pretrained` and
`PeftModel.from_pretrained` work as with PEFT's own methods. Where adapters go is decided by the one block-selection
layer (`blocks.select_blocks`); the config only carries the user's request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

from peft import PeftConfig
from torch import nn

from .adapters import AdapterSpec
from .blocks import Target, select_blocks

CONFIG_FORMAT = 1  # bump when a saved config gains fields an older release cannot honour

BlocksSpec = Optional[Union[list, dict]]


@dataclass
class AdapterConfig(PeftConfig):
    """Fields shared by every adapter type (see the subclasses for the method options)."""

    method: ClassVar[str]
    peft_type_name: ClassVar[str]

    r: int = field(default=8, metadata={"help": "rank: LoRA rank, SVFit top-r singular values, LoLDU first-r pivots"})
    alpha: Optional[float] = field(default=None, metadata={"help": "scale numerator, scale = alpha / r; None → r"})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "PEFT semantics: a list matches full names or dotted suffixes, a str is a regex"},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "same matcher, removes"})
    blocks: BlocksSpec = field(
        default=None,
        metadata={"help": "block names/groups (list), or name → rank / {r, alpha, method}; rank 0 = no adapter there"},
    )
    module_kinds: Optional[list[str]] = field(default=None, metadata={"help": "e.g. ['attn2'], ['q', 'v'], ['resnet']"})
    family: Optional[str] = field(default=None, metadata={"help": "sd-unet | vit | bert | llama; None → detect"})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "extra fully-trained modules"})
    seed: int = field(default=0, metadata={"help": "seed of random inits (LoRA A, randomized SVD, random z)"})
    embed_factors: bool = field(
        default=False, metadata={"help": "save the frozen factors in the adapter file instead of recomputing them"}
    )
    decompose_dtype: str = field(default="float32", metadata={"help": "float32 or float64"})
    format_version: int = field(default=CONFIG_FORMAT, metadata={"help": "peft_inits config format"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = self.peft_type_name
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r must be an int ≥ 1, got {self.r!r}")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if self.format_version > CONFIG_FORMAT:
            raise ValueError(_newer_message(f"format_version {self.format_version}"))
        AdapterSpec(**self._spec_kwargs(self.method))  # validate the method options now, not at injection time

    @classmethod
    def check_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        """Refuse a saved config with fields this release does not know instead of silently dropping them."""
        known = {f.name for f in dataclasses.fields(cls)} | {"runtime_config"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(_newer_message(f"unknown fields {unknown}"))
        return kwargs

    def _spec_kwargs(self, method: str) -> dict[str, Any]:
        spec_fields = {f.name for f in dataclasses.fields(AdapterSpec)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in spec_fields}
        values.update(method=method)
        return values

    def resolve(self, model: nn.Module) -> list[Target]:
        """The dry run: which modules get which adapter, rank and alpha; the model is not touched."""
        return select_blocks(
            model,
            method=self.method,
            r=self.r,
            alpha=self.alpha,
            target_modules=self.target_modules,
            blocks=self.blocks,
            module_kinds=self.module_kinds,
            exclude_modules=self.exclude_modules,
            family=self.family,
        )

    def spec_for(self, target: Target) -> AdapterSpec:
        """The AdapterSpec of one resolved target (its method may differ from the config's through `blocks`)."""
        kwargs = self._spec_kwargs(target.method) if target.method == self.method else _default_options(self)
        kwargs.update(method=target.method, r=target.rank, alpha=target.alpha)
        return AdapterSpec(**kwargs)


def _default_options(config: AdapterConfig) -> dict[str, Any]:
    """Options for a block whose method was overridden: that method's defaults plus the shared fields."""
    shared = ("seed", "embed_factors", "decompose_dtype")
    return {name: getattr(config, name) for name in shared}


def _newer_message(what: str) -> str:
    return (
        f"this adapter config has {what}: it was saved by a newer peft_inits than the installed one; "
        "upgrade peft-inits (pip install -U peft-inits) to load it"
    )


@dataclass
class LoRAConfig(AdapterConfig):
    """Vanilla LoRA (Hu et al. 2021): A kaiming-uniform, B = 0, trains r·(m+n) values per matrix."""

    method: ClassVar[str] = "lora"
    peft_type_name: ClassVar[str] = "PI_LORA"


@dataclass
class SVFitConfig(AdapterConfig):
    """SVFit (arXiv 2409.05926): train only the top-r singular values of each frozen weight (r values per matrix)."""

    method: ClassVar[str] = "svfit"
    peft_type_name: ClassVar[str] = "SVFIT"

    energy_threshold: Optional[float] = field(
        default=None, metadata={"help": "smallest rank ≤ r whose Σσ² reaches this fraction of ‖W‖²_F (e.g. 0.99)"}
    )
    svd: str = field(default="exact", metadata={"help": "exact | randomized"})
    svd_niter: int = field(default=2, metadata={"help": "power iterations of the randomized SVD"})
    svd_oversample: int = field(default=10, metadata={"help": "extra columns of the randomized SVD"})


@dataclass
class LoLDUConfig(AdapterConfig):
    """LoLDU (arXiv 2410.13618): train only the diagonal z of a pivoted LDU (r values, +1 with a trainable σ)."""

    method: ClassVar[str] = "loldu"
    peft_type_name: ClassVar[str] = "LOLDU"

    z_init: str = field(default="lu", metadata={"help": "lu (identity at step 0), uniform, s_uniform, normal, ..."})
    train_sigma: bool = field(default=False, metadata={"help": "train the scale σ = alpha / r as well"})
    ldu_method: str = field(default="auto", metadata={"help": "auto | truncated (r steps) | full LU"})


CONFIG_CLASSES: tuple[type[AdapterConfig], ...] = (LoRAConfig, SVFitConfig, LoLDUConfig)
