"""Drop-in PEFT configs: `AdapterConfig`, the fields every method shares, which each method file subclasses.

A method's config (`LoRAConfig`, `SVFitConfig`, `LoLDUConfig`, `PiSSAConfig`, `MiLoRAConfig`, and any method
registered from outside) is an explicit `@dataclass class SVFitConfig(AdapterConfig)` whose own fields are the
method's options; `options_class` derives the method's frozen options dataclass from them. Each is a `peft.PeftConfig`
dataclass, so `peft.get_peft_model(model, SVFitConfig(...))`, `save_pretrained` and
`PeftModel.from_pretrained` work as with PEFT's own methods. Where adapters go is decided by the one block-selection
layer (`blocks.select_blocks`); the config only carries the user's request.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from peft import PeftConfig
from torch import nn

from .adapters import AdapterSpec
from .blocks import Target, select_blocks
from .checkpoint import verify_adapter_dir
from .peft_types import add_peft_type
from .registry import MethodOptions, get_method, option_kind

CONFIG_FORMAT = 1  # bump when a saved config gains fields an older release cannot honour

BlocksSpec = Optional[Union[list, dict]]


@dataclass
class AdapterConfig(PeftConfig):
    """Fields shared by every adapter type (see the subclasses for the method options)."""

    method: ClassVar[str]  # the three set by `register_method`
    peft_type_name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]]  # the options dataclass derived from the fields below the shared ones

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
    decompose_dtype: str = field(
        default="float32",
        metadata={"help": "dtype the base weight is decomposed in", "choices": ("float32", "float64")},
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "PEFT's convention: True = the method's init (no change at step 0, the documented behaviour); "
            "False = a seeded random non-identity init of the trained tensors (for tests of save/load/merge)"
        },
    )
    format_version: int = field(default=CONFIG_FORMAT, metadata={"help": "peft_inits config format"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = add_peft_type(self.peft_type_name)  # a real PeftType member: transformers reads `.value`
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r must be an int ≥ 1, got {self.r!r}")
        if self.alpha is not None and (
            isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha)
        ):
            raise ValueError(f"alpha must be a finite number (or None for alpha = r), got {self.alpha!r}")
        if not isinstance(self.init_weights, bool):
            raise ValueError(f"init_weights must be True or False, got {self.init_weights!r}")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.format_version, bool) or not isinstance(self.format_version, int):
            raise ValueError(
                f"format_version must be an int, got {self.format_version!r}; is this a peft_inits config?"
            )
        if self.format_version > CONFIG_FORMAT:
            raise ValueError(_newer_message(f"format_version {self.format_version}"))
        self.spec_for_method(self.method, self.r, self.alpha)  # validate the options now, not at injection time

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, subfolder: str | None = None, *, verify: bool = True, **kwargs: Any
    ):
        """Read a saved config; a local adapter directory is verified first (config, checksums, symlinks), so
        `PeftModel.from_pretrained` refuses a damaged directory before the model is touched. `verify=False`: the
        caller has verified it already."""
        path = Path(pretrained_model_name_or_path, subfolder or "")
        pickled = (path / "adapter_model.bin").is_file() and not (path / "adapter_model.safetensors").exists()
        local = path.exists() or path.is_absolute() or str(pretrained_model_name_or_path).startswith((".", "~"))
        if verify and local and not pickled:  # PEFT's pickle layout is PEFT's to read; the load checks still apply
            verify_adapter_dir(path)  # also restores a directory whose save was interrupted mid-swap
        return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

    @classmethod
    def check_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        """Refuse a saved config with fields this release does not know instead of silently dropping them."""
        known = {f.name for f in dataclasses.fields(cls)} | {"runtime_config"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(_newer_message(f"unknown fields {unknown}"))
        return kwargs

    def check_options(self) -> None:
        """Cross-field rules of the method's options (override in a method's config). It runs on the config and on
        every options instance (flags, sweeps, blocks), so it may read only option fields."""

    def method_options(self) -> dict[str, Any]:
        """This config's values of its method's options."""
        return {f.name: getattr(self, f.name) for f in get_method(self.method).option_fields()}

    def spec_for_method(self, method: str, r: int, alpha: float | None) -> AdapterSpec:
        """The AdapterSpec for a module given `method` (a block may override the config's): this config's options
        for its own method, the method's defaults for another one."""
        return AdapterSpec(
            method=method,
            r=r,
            alpha=alpha,
            seed=self.seed,
            embed_factors=self.embed_factors,
            decompose_dtype=self.decompose_dtype,
            init_weights=self.init_weights,
            options=self.method_options() if method == self.method else None,
        )

    def resolve(self, model: nn.Module) -> list[Target]:
        """The dry run: which modules get which adapter, rank and alpha; the model is not touched.

        Every target's rank is checked against its matrix here, before anything is injected.
        """
        targets = select_blocks(
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
        modules = dict(model.named_modules())
        for target in targets:
            module = modules[target.name]
            weight = module.get_base_layer().weight if hasattr(module, "get_base_layer") else module.weight
            get_method(target.method).check_rank(target.rank, weight.shape[0], weight[0].numel(), target.name)
        return targets

    def spec_for(self, target: Target) -> AdapterSpec:
        """The AdapterSpec of one resolved target (its method may differ from the config's through `blocks`)."""
        return self.spec_for_method(target.method, target.rank, target.alpha)


def _newer_message(what: str) -> str:
    return (
        f"this adapter config has {what}: it was saved by a newer peft_inits than the installed one; "
        "upgrade peft-inits (pip install -U peft-inits) to load it"
    )


def option_fields(config: type[AdapterConfig]) -> list[dataclasses.Field]:
    """A method config's own fields, beyond `AdapterConfig`'s shared ones: the method's options."""
    shared = {f.name for f in dataclasses.fields(AdapterConfig)}
    return [f for f in dataclasses.fields(config) if f.name not in shared]


def options_class(config: type[AdapterConfig]) -> type[MethodOptions]:
    """Derive the frozen options dataclass of a method (`SVFitConfig.Options`) from its config's option fields.

    Refuses a config that is not a `@dataclass` subclass of `AdapterConfig` or that redefines a shared field."""
    own_dataclass = isinstance(config, type) and "__dataclass_fields__" in vars(config)
    if not (own_dataclass and issubclass(config, AdapterConfig)):
        raise TypeError(f"{config!r} must be a @dataclass subclass of peft_inits.AdapterConfig")
    declared = config.__dataclass_fields__
    redefined = sorted(f.name for f in dataclasses.fields(AdapterConfig) if declared[f.name] is not f)
    if redefined:
        raise ValueError(f"{config.__name__} redefines field(s) {redefined} that every config shares")
    hints = typing.get_type_hints(config)
    for f in option_fields(config):
        try:
            option_kind(hints[f.name])
        except TypeError as exc:
            raise TypeError(f"{config.__name__}.{f.name}: {exc}") from None
    fields = [(f.name, hints[f.name], field(default=f.default, metadata=f.metadata)) for f in option_fields(config)]
    cls = dataclasses.make_dataclass(
        config.__name__.removesuffix("Config") + "Options",
        fields,
        bases=(MethodOptions,),
        frozen=True,
        namespace={"check": config.check_options, "__doc__": f"The options of {config.__name__} (frozen)."},
    )
    cls.__module__ = config.__module__
    cls.__qualname__ = f"{config.__qualname__}.Options"  # reachable by that name, so adapters pickle
    config.Options = cls
    return cls
