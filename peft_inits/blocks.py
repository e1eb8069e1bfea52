"""Block selection: turn "which blocks, which rank, which adapter" into a list of target modules.

Every adapter type and the PEFT bridge resolve their targets here, so the whole code base has one pattern matcher
(:func:`matches`) and one notion of model blocks. :func:`select_blocks` is pure and is the dry run: it returns the
resolved :class:`Target` list without touching the model.

Families and their block vocabularies (auto-detected from module names, see :func:`detect_family`):

- ``sd-unet`` (diffusers ``UNet2DConditionModel``): ``in0..in3`` = ``down_blocks.0..3``, ``mid`` = ``mid_block``,
  ``out0..out3`` = ``up_blocks.0..3``; groups ``upper`` (in0+out3), ``middle`` (in1+out2), ``lower`` (in2+out1)
  from Block-wise LoRA (arXiv 2403.07500), plus ``down``, ``up``, ``all``; and kohya / A1111 sub-block ids
  ``IN00..IN11``, ``MID``, ``OUT00..OUT11`` (LDM ``input_blocks``/``output_blocks`` numbering).
- ``vit`` (timm ``blocks.{i}``, transformers 5.x ``layers.{i}``, transformers 4.x ``encoder.layer.{i}``),
  ``bert`` (BERT/RoBERTa ``encoder.layer.{i}``), ``llama`` (decoders with ``layers.{i}.self_attn``): blocks
  ``layer{i}``, addressed as ``layer3``, ``"3"``, ``3``, or inclusive ranges ``"0-5"``; group ``all``.
- ``generic``: no blocks and no kinds; ``target_modules`` is required.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .registry import method_names

__all__ = [
    "FAMILIES",
    "KOHYA_BLOCK_IDS",
    "LBW17_BLOCK_IDS",
    "SD_UNET_BLOCKS",
    "SD_UNET_GROUPS",
    "Target",
    "block_names",
    "detect_family",
    "kohya_block_id",
    "lbw_blocks",
    "matches",
    "module_kinds_of",
    "select_blocks",
]

FAMILIES = ("sd-unet", "vit", "bert", "llama", "generic")
# Other spellings users reach for; resolved before anything else.
_FAMILY_ALIASES = {"roberta": "bert", "unet": "sd-unet"}

SD_UNET_BLOCKS = ("in0", "in1", "in2", "in3", "mid", "out0", "out1", "out2", "out3")
SD_UNET_GROUPS: dict[str, tuple[str, ...]] = {
    "upper": ("in0", "out3"),
    "middle": ("in1", "out2"),
    "lower": ("in2", "out1"),
    "down": ("in0", "in1", "in2", "in3"),
    "up": ("out0", "out1", "out2", "out3"),
    "all": SD_UNET_BLOCKS,
}
# kohya sd-scripts' 25 UNet block indices, in order (index i of a 25-value vector addresses KOHYA_BLOCK_IDS[i]).
KOHYA_BLOCK_IDS = (
    *(f"IN{i:02d}" for i in range(12)),
    "MID",
    *(f"OUT{i:02d}" for i in range(12)),
)
# A1111 LoRA Block Weight's 17-value vector: the text encoder, then the 16 UNet sub-blocks that hold attention.
LBW17_BLOCK_IDS = ("BASE", *(f"IN{i:02d}" for i in (1, 2, 4, 5, 7, 8)), "MID", *(f"OUT{i:02d}" for i in range(3, 12)))

_OVERRIDE_KEYS = frozenset({"r", "alpha", "method"})
_MAX_SHOWN = 10

# Block entries of a higher level beat lower ones on the modules they share; equal levels: the later entry wins.
_LEVEL_GROUP, _LEVEL_BLOCK, _LEVEL_SUB_BLOCK = 0, 1, 2


@dataclass(frozen=True)
class Target:
    """One module that will get an adapter."""

    name: str  # full dotted module name in the model
    block: str | None  # "in0", "mid", "out3", "layer5", ...; None outside any block
    kind: str | None  # "q", "ff_in", "conv1", "qkv", ...; None when the family has no name for it
    method: str | None  # a registered method name; None for a selection-only call
    rank: int  # >= 1: rank-0 entries are dropped, never returned
    alpha: float  # scaling numerator, scale = alpha / rank


def matches(pattern: str | Iterable[str] | None, name: str) -> bool:
    """Tell whether ``name`` is selected by ``pattern``, with PEFT ``target_modules`` semantics.

    A str is a regex that must match the whole name (``re.fullmatch``); an iterable entry matches when it equals
    the full name or is a dotted suffix of it (``"q_proj"`` matches ``"a.q_proj"``, not ``"a.xq_proj"``);
    ``None`` matches nothing. This is the only matcher of the code base.
    """
    if pattern is None:
        return False
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == entry or name.endswith("." + entry) for entry in pattern)


# --------------------------------------------------------------------------------------------------------------------
# Family vocabularies


@dataclass(frozen=True)
class _KindRule:
    """Names ending in ``pattern`` (at a dot boundary) have module kind ``kind`` and also answer to ``tags``."""

    pattern: re.Pattern[str]
    kind: str
    tags: tuple[str, ...] = ()


def _rule(suffix_regex: str, kind: str, *tags: str) -> _KindRule:
    return _KindRule(re.compile(rf"(?:^|\.){suffix_regex}$"), kind, tags)


@dataclass(frozen=True)
class _Family:
    """What a family knows: how a name maps to a block and a kind, kind groups and the default kinds."""

    name: str
    block_of: Callable[[str], str | None]
    rules: tuple[_KindRule, ...]
    kind_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_kinds: tuple[str, ...] = ()
    indexed: bool = False  # blocks are layer{i}

    def classify(self, name: str) -> tuple[str | None, frozenset[str]]:
        """Return the module kind of ``name`` and every token that selects it in ``module_kinds``."""
        for rule in self.rules:
            if rule.pattern.search(name):
                own = {rule.kind, *rule.tags}
                groups = {group for group, members in self.kind_groups.items() if own.intersection(members)}
                return rule.kind, frozenset(own | groups)
        return None, frozenset()

    def kind_vocabulary(self) -> list[str]:
        """All tokens accepted in ``module_kinds``: kinds, tags and group aliases."""
        tokens = {token for rule in self.rules for token in (rule.kind, *rule.tags)}
        return sorted(tokens | set(self.kind_groups))


_SD_BLOCK = re.compile(r"(?:^|\.)(?:(down_blocks|up_blocks)\.(\d+)|mid_block)\.")
_SD_SUB_BLOCK = re.compile(r"(?:^|\.)(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.")
_SD_MID = re.compile(r"(?:^|\.)mid_block\.")
_SD_CONV_IN = re.compile(r"(?:^|\.)conv_in$")


def _sd_unet_block(name: str) -> str | None:
    found = _SD_BLOCK.search(name)
    if found is None:
        return None
    if found.group(1) is None:
        return "mid"
    return ("in" if found.group(1) == "down_blocks" else "out") + found.group(2)


def kohya_block_id(name: str) -> str | None:
    """Map an SD UNet module name to its kohya / A1111 block id (``IN00..IN11``, ``MID``, ``OUT00..OUT11``).

    The ids follow the original LDM ``input_blocks``/``output_blocks`` numbering that kohya sd-scripts and the A1111
    LoRA Block Weight extension use: level ``i`` of the UNet spans three ids, resnet/attention ``j`` of
    ``down_blocks.i`` is ``IN{3i+j+1}`` and its downsampler ``IN{3i+3}``; resnet/attention ``j`` of ``up_blocks.i``
    is ``OUT{3i+j}`` and its upsampler ``OUT{3i+2}``; ``conv_in`` is ``IN00``. Other modules give ``None``.
    """
    found = _SD_SUB_BLOCK.search(name)
    if found is not None:
        direction, level, unit_type, unit = found.group(1), int(found.group(2)), found.group(3), int(found.group(4))
        position = 3 * level + (2 if unit_type.endswith("samplers") else unit)
        return f"IN{position + 1:02d}" if direction == "down" else f"OUT{position:02d}"
    if _SD_MID.search(name):
        return "MID"
    if _SD_CONV_IN.search(name):
        return "IN00"
    return None


def _layer_block(pattern: str) -> Callable[[str], str | None]:
    compiled = re.compile(pattern)

    def block_of(name: str) -> str | None:
        found = compiled.search(name)
        return None if found is None else f"layer{found.group(1)}"

    return block_of


def _sd_unet_attention_rules() -> Iterator[_KindRule]:
    aliases = {"attn1": "self_attn", "attn2": "cross_attn"}
    for attention, alias in aliases.items():
        for suffix, kind in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), (r"to_out\.0", "o")):
            yield _rule(rf"{attention}\.{suffix}", kind, attention, alias, f"{attention}.{kind}")


_ATTENTION_KINDS = ("q", "k", "v", "o")
# Module kinds of the HF BERT layout; transformers 4.x ViT reuses it with ``attention.attention`` for the q/k/v.
_BERT_LAYOUT_RULES = (
    _rule(r"attention\.output\.dense", "o"),
    _rule(r"intermediate\.dense", "ff_in"),
    _rule(r"output\.dense", "ff_out"),
)

_FAMILY_SPECS: dict[str, _Family] = {
    "sd-unet": _Family(
        name="sd-unet",
        block_of=_sd_unet_block,
        rules=(
            *_sd_unet_attention_rules(),
            _rule(r"ff\.net\.0\.proj", "ff_in"),
            _rule(r"ff\.net\.2", "ff_out"),
            _rule("proj_in", "proj_in"),
            _rule("proj_out", "proj_out"),
            _rule(r"resnets\.\d+\.conv1", "conv1"),
            _rule(r"resnets\.\d+\.conv2", "conv2"),
            _rule(r"resnets\.\d+\.conv_shortcut", "conv_shortcut"),
            _rule(r"resnets\.\d+\.time_emb_proj", "time_emb"),
            _rule(r"(?:downsamplers|upsamplers)\.\d+\.conv", "resample"),
            _rule(r"time_embedding\.linear_\d+", "time_embedding"),
            _rule("conv_in", "conv_in"),
            _rule("conv_out", "conv_out"),
        ),
        kind_groups={
            "attn": _ATTENTION_KINDS,
            "ff": ("ff_in", "ff_out"),
            "proj": ("proj_in", "proj_out"),
            "resnet": ("conv1", "conv2"),
        },
        default_kinds=("attn",),
    ),
    "vit": _Family(
        name="vit",
        block_of=_layer_block(r"(?:^|\.)(?:blocks|layers|encoder\.layer)\.(\d+)\."),
        rules=(
            # timm fuses q, k and v into one Linear: kinds q/k/v select it so the query+value default works there.
            _rule(r"attn\.qkv", "qkv", "q", "k", "v"),
            _rule(r"attn\.proj", "o"),
            *(_rule(rf"attention\.{kind}_proj", kind) for kind in _ATTENTION_KINDS),
            _rule(r"attention\.attention\.query", "q"),
            _rule(r"attention\.attention\.key", "k"),
            _rule(r"attention\.attention\.value", "v"),
            *_BERT_LAYOUT_RULES,
            _rule(r"mlp\.fc1", "ff_in"),
            _rule(r"mlp\.fc2", "ff_out"),
            _rule(r"patch_embed\.proj|patch_embeddings\.projection", "patch_embed"),
            _rule("head|classifier", "head"),
        ),
        kind_groups={"attn": (*_ATTENTION_KINDS, "qkv"), "ff": ("ff_in", "ff_out")},
        default_kinds=("q", "v"),
        indexed=True,
    ),
    "bert": _Family(
        name="bert",
        block_of=_layer_block(r"(?:^|\.)encoder\.layer\.(\d+)\."),
        rules=(
            _rule(r"attention\.self\.query", "q"),
            _rule(r"attention\.self\.key", "k"),
            _rule(r"attention\.self\.value", "v"),
            *_BERT_LAYOUT_RULES,
            _rule(r"pooler\.dense", "pooler"),
            _rule(r"classifier(?:\.dense|\.out_proj)?", "head"),
        ),
        kind_groups={"attn": _ATTENTION_KINDS, "ff": ("ff_in", "ff_out")},
        default_kinds=("q", "v"),
        indexed=True,
    ),
    "llama": _Family(
        name="llama",
        block_of=_layer_block(r"(?:^|\.)layers\.(\d+)\."),
        rules=(
            *(_rule(rf"self_attn\.{kind}_proj", kind) for kind in _ATTENTION_KINDS),
            _rule(r"mlp\.gate_proj", "ff_gate"),
            _rule(r"mlp\.up_proj", "ff_in"),
            _rule(r"mlp\.down_proj", "ff_out"),
            _rule("lm_head", "head"),
        ),
        kind_groups={"attn": _ATTENTION_KINDS, "ff": ("ff_gate", "ff_in", "ff_out")},
        default_kinds=("q", "v"),
        indexed=True,
    ),
    "generic": _Family(name="generic", block_of=lambda name: None, rules=()),
}

# Detection signatures, tried in order: a name matching the regex means the family.
_FAMILY_SIGNATURES = (
    ("sd-unet", re.compile(r"(?:^|\.)(?:down_blocks|up_blocks|mid_block)\..*\.time_emb_proj$")),
    ("bert", re.compile(r"(?:^|\.)encoder\.layer\.\d+\.attention\.self\.query$")),
    (
        "vit",
        re.compile(
            r"(?:^|\.)(?:blocks\.\d+\.attn\.qkv|layers\.\d+\.attention\.q_proj"
            r"|encoder\.layer\.\d+\.attention\.attention\.query)$"
        ),
    ),
    ("llama", re.compile(r"(?:^|\.)layers\.\d+\.self_attn\.q_proj$")),
)


def detect_family(model: nn.Module) -> str:
    """Guess the block vocabulary of ``model``: 'sd-unet' | 'vit' | 'bert' | 'llama' | 'generic'.

    Module names decide (they survive PEFT wrapping and prefixes); a diffusers UNet is also known by its class name.
    A VAE, whose blocks carry no ``time_emb_proj``, stays 'generic'.
    """
    if "UNet2DCondition" in type(model).__name__:
        return "sd-unet"
    names = [name for name, _ in model.named_modules()]
    for family, signature in _FAMILY_SIGNATURES:
        if any(signature.search(name) for name in names):
            return family
    return "generic"


def _family_spec(family: str) -> _Family:
    canonical = _FAMILY_ALIASES.get(family, family)
    if canonical not in _FAMILY_SPECS:
        raise ValueError(f"unknown model family {family!r}; valid families: {', '.join(FAMILIES)}")
    return _FAMILY_SPECS[canonical]


def block_names(family: str, num_layers: int | None = None) -> dict[str, list[str]]:
    """Valid block names of a family: ``{'blocks': [...], 'groups': [...], 'sub_blocks': [...]}``.

    Index families (vit, bert, llama) number their blocks; pass ``num_layers`` to list them, otherwise the entry is
    the pattern ``layer<i>``. These are the names ``select_blocks(blocks=...)`` accepts.
    """
    spec = _family_spec(family)
    if spec.name == "sd-unet":
        return {"blocks": list(SD_UNET_BLOCKS), "groups": list(SD_UNET_GROUPS), "sub_blocks": list(KOHYA_BLOCK_IDS)}
    if spec.indexed:
        layers = ["layer<i>"] if num_layers is None else [f"layer{index}" for index in range(num_layers)]
        return {"blocks": layers, "groups": ["all", "<i>-<j> (inclusive range)"], "sub_blocks": []}
    return {"blocks": [], "groups": [], "sub_blocks": []}


def module_kinds_of(family: str) -> list[str]:
    """Tokens accepted by ``select_blocks(module_kinds=...)`` for a family (kinds, tags and group aliases)."""
    return _family_spec(family).kind_vocabulary()


# --------------------------------------------------------------------------------------------------------------------
# Candidates


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def _candidates(model: nn.Module) -> list[str]:
    """Names of Linear/Conv2d modules in model order; an adapter wrapper (``base_layer``) counts, its insides don't."""
    names: list[str] = []
    wrapper_prefix: str | None = None
    for name, module in model.named_modules():
        # named_modules is a pre-order walk, so a wrapper's descendants follow it contiguously.
        if wrapper_prefix is not None and name.startswith(wrapper_prefix):
            continue
        wrapper_prefix = None
        base_layer = getattr(module, "base_layer", None)
        if isinstance(base_layer, nn.Module):
            wrapper_prefix = name + "."
            if _adaptable(base_layer):
                names.append(name)
        elif _adaptable(module):
            names.append(name)
    return names


def _layers(spec: _Family, names: Iterable[str]) -> list[int]:
    """Layer indices present in the model, for index families (empty otherwise)."""
    if not spec.indexed:
        return []
    blocks = {spec.block_of(name) for name in names}
    return sorted(int(block.removeprefix("layer")) for block in blocks if block is not None)


def _freeze_pattern(pattern: str | Iterable[str] | None) -> str | tuple[str, ...] | None:
    """Materialise a one-shot iterable so it can be matched against every name."""
    return pattern if pattern is None or isinstance(pattern, str) else tuple(pattern)


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_SHOWN])
    more = f", ... ({len(names)} in total)" if len(names) > _MAX_SHOWN else ""
    return (shown + more) if names else "(the model has no nn.Linear or nn.Conv2d module)"


# --------------------------------------------------------------------------------------------------------------------
# Argument validation


def _check_method(method: Any, where: str) -> str:
    if method not in method_names():
        raise ValueError(f"unknown method {method!r}{where}; valid methods: {', '.join(method_names())}")
    return str(method)


def _check_rank(rank: Any, where: str, minimum: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < minimum:
        raise ValueError(f"rank r{where} must be an integer >= {minimum}, got {rank!r}")
    return int(rank)


def _check_alpha(alpha: Any, where: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(f"alpha{where} must be a real number, got {alpha!r}")
    return float(alpha)


def _as_sequence(value: str | Iterable[Any]) -> list[Any]:
    """A lone string is one entry, not an iterable of characters."""
    return [value] if isinstance(value, str) else list(value)


# --------------------------------------------------------------------------------------------------------------------
# Block plans


@dataclass(frozen=True)
class _Setting:
    """Adapter settings of a block; ``alpha=None`` means alpha = rank."""

    method: str | None
    rank: int
    alpha: float | None


@dataclass(frozen=True)
class _BlockRule:
    """One ``blocks`` entry: the block names / sub-block ids it covers, its precedence and its settings."""

    covers: frozenset[str]
    level: int
    order: int
    setting: _Setting


_KOHYA_ID = re.compile(r"(?:IN\d\d|OUT\d\d|MID|M00)", re.IGNORECASE)
_LAYER_ENTRY = re.compile(r"(?:layer)?(\d+)")
_LAYER_RANGE = re.compile(r"(?:layer)?(\d+)-(?:layer)?(\d+)")


def _unknown_block(key: Any, spec: _Family, layers: Sequence[int]) -> ValueError:
    if spec.indexed:
        valid = ", ".join(f"layer{index}" for index in layers) or "(no layer found in the model)"
        return ValueError(
            f"unknown block {key!r} for family {spec.name!r}; valid blocks: {valid}; "
            "also accepted: a layer index (3 or '3'), an inclusive range ('0-5') and 'all'"
        )
    if spec.name == "sd-unet":
        groups = ", ".join(f"{group} ({'+'.join(members)})" for group, members in SD_UNET_GROUPS.items())
        return ValueError(
            f"unknown block {key!r} for family 'sd-unet'; valid blocks: {', '.join(SD_UNET_BLOCKS)}; "
            f"groups: {groups}; kohya sub-blocks: IN00..IN11, MID, OUT00..OUT11"
        )
    return ValueError(
        f"family {spec.name!r} has no block vocabulary, so blocks={key!r} cannot be resolved; "
        f"select modules with target_modules, or pass family= one of {', '.join(FAMILIES[:-1])}"
    )


def _block_cover(key: Any, spec: _Family, layers: Sequence[int]) -> tuple[frozenset[str], int]:
    """Resolve one ``blocks`` key to the block names or sub-block ids it covers, and its precedence level."""
    if spec.name == "sd-unet" and isinstance(key, str):
        if key in SD_UNET_BLOCKS:
            return frozenset({key}), _LEVEL_BLOCK
        if key in SD_UNET_GROUPS:
            return frozenset(SD_UNET_GROUPS[key]), _LEVEL_GROUP
        if _KOHYA_ID.fullmatch(key):
            sub_block = "MID" if key.upper() == "M00" else key.upper()
            if sub_block in KOHYA_BLOCK_IDS:
                return frozenset({sub_block}), _LEVEL_SUB_BLOCK
    elif spec.indexed and not isinstance(key, bool):
        text = str(key) if isinstance(key, (str, numbers.Integral)) else ""
        if text == "all":
            return frozenset(f"layer{index}" for index in layers), _LEVEL_GROUP
        single, span = _LAYER_ENTRY.fullmatch(text), _LAYER_RANGE.fullmatch(text)
        if single and int(single.group(1)) in layers:
            return frozenset({f"layer{int(single.group(1))}"}), _LEVEL_BLOCK
        if span:
            first, last = int(span.group(1)), int(span.group(2))
            wanted = range(first, last + 1)
            if first <= last and all(index in layers for index in wanted):
                return frozenset(f"layer{index}" for index in wanted), _LEVEL_GROUP
    raise _unknown_block(key, spec, layers)


def _block_setting(key: Any, value: Any, default: _Setting) -> _Setting:
    """Apply one ``blocks`` value (None, a rank, or a mapping of overrides) on top of the default settings."""
    where = f" for block {key!r}"
    if value is None:
        return default
    if not isinstance(value, Mapping):
        return _Setting(default.method, _check_rank(value, where, minimum=0), default.alpha)
    unknown = set(value) - _OVERRIDE_KEYS
    if unknown:
        raise ValueError(
            f"unknown override key(s) {sorted(map(str, unknown))}{where}; valid keys: {sorted(_OVERRIDE_KEYS)}"
        )
    return _Setting(
        method=_check_method(value.get("method", default.method), where),
        rank=_check_rank(value.get("r", default.rank), where, minimum=0),
        alpha=_check_alpha(value["alpha"], where) if "alpha" in value else default.alpha,
    )


def _block_rules(
    blocks: Mapping[Any, Any] | Iterable[Any], spec: _Family, layers: Sequence[int], default: _Setting
) -> list[_BlockRule]:
    """Parse the ``blocks`` argument into rules, validating every name and value up front."""
    entries = list(blocks.items()) if isinstance(blocks, Mapping) else [(key, None) for key in _as_sequence(blocks)]
    rules = []
    for order, (key, value) in enumerate(entries):
        covers, level = _block_cover(key, spec, layers)
        rules.append(_BlockRule(covers, level, order, _block_setting(key, value, default)))
    return rules


def _winning_setting(rules: Sequence[_BlockRule], block: str | None, sub_block: str | None) -> _Setting | None:
    """Settings of the highest-level, latest rule covering the module; None when no rule covers it."""
    covering = [rule for rule in rules if block in rule.covers or sub_block in rule.covers]
    winner = max(covering, key=lambda rule: (rule.level, rule.order), default=None)
    return None if winner is None else winner.setting


def _wanted_kinds(
    spec: _Family,
    module_kinds: Iterable[str] | None,
    target_modules: str | Iterable[str] | None,
    candidates: Sequence[str],
) -> frozenset[str] | None:
    """The kind tokens to keep (None: no kind filter), falling back to the family default, validated."""
    if module_kinds is not None:
        wanted = frozenset(_as_sequence(module_kinds))
    elif target_modules is not None:
        return None
    elif spec.default_kinds:
        wanted = frozenset(spec.default_kinds)
    else:
        raise ValueError(
            f"family {spec.name!r} has no default targets: pass target_modules (a regex string or a list of "
            f"module-name suffixes). Linear/Conv2d modules: {_preview(candidates)}"
        )
    vocabulary = spec.kind_vocabulary()
    unknown = sorted(wanted - set(vocabulary))
    if unknown:
        valid = ", ".join(vocabulary) or "(none: use target_modules)"
        raise ValueError(f"unknown module kind(s) {unknown} for family {spec.name!r}; valid kinds: {valid}")
    return wanted


# --------------------------------------------------------------------------------------------------------------------
# Selection


def select_blocks(
    model: nn.Module,
    *,
    method: str | None = None,
    r: int = 1,
    alpha: float | None = None,
    target_modules: str | Iterable[str] | None = None,
    blocks: Mapping[str, int | Mapping[str, Any]] | Iterable[str] | None = None,
    module_kinds: Iterable[str] | None = None,
    exclude_modules: str | Iterable[str] | None = None,
    family: str | None = None,
) -> list[Target]:
    """Resolve which Linear/Conv2d modules get which adapter. Pure: does not modify the model. This IS the dry run.

    - ``target_modules`` / ``exclude_modules``: PEFT semantics (see :func:`matches`).
    - ``module_kinds``: kinds or kind groups of the family (e.g. ``["q", "v"]``, ``["attn2"]``, ``["resnet"]``);
      a module is kept when it answers to any of them. With neither ``target_modules`` nor ``module_kinds`` the
      family default applies (sd-unet: all attention projections; vit/bert/llama: query and value).
    - ``blocks``: ``None`` = everywhere; a list of block names / groups; or a mapping name -> rank or
      name -> ``{"r", "alpha", "method"}``. Rank 0 means no adapter there. Where entries overlap, a sub-block id
      beats a block name, which beats a group or range; equal levels: the later entry wins.
    - ``alpha``: scaling numerator (scale = alpha / rank). ``None`` gives every target alpha = its own rank.

    Returns the targets in model order; raises ``ValueError`` on unknown names or when nothing is selected.
    """
    default = _Setting(
        method=None if method is None else _check_method(method, ""),
        rank=_check_rank(r, "", minimum=1),
        alpha=None if alpha is None else _check_alpha(alpha, ""),
    )
    spec = _family_spec(detect_family(model) if family is None else family)
    candidates = _candidates(model)
    wanted_kinds = _wanted_kinds(spec, module_kinds, target_modules, candidates)
    target_pattern = _freeze_pattern(target_modules)
    exclude_pattern = _freeze_pattern(exclude_modules)
    rules = None if blocks is None else _block_rules(blocks, spec, _layers(spec, candidates), default)

    targets = []
    for name in candidates:
        if target_pattern is not None and not matches(target_pattern, name):
            continue
        kind, tokens = spec.classify(name)
        if (wanted_kinds is not None and not wanted_kinds & tokens) or matches(exclude_pattern, name):
            continue
        block = spec.block_of(name)
        setting: _Setting | None = default
        if rules is not None:
            setting = _winning_setting(rules, block, kohya_block_id(name) if spec.name == "sd-unet" else None)
        if setting is None or setting.rank == 0:
            continue
        resolved_alpha = float(setting.rank) if setting.alpha is None else setting.alpha
        targets.append(Target(name, block, kind, setting.method, setting.rank, resolved_alpha))

    if not targets:
        raise ValueError(
            f"no module selected (family={spec.name!r}, method={method!r}, r={r!r}, "
            f"target_modules={target_modules!r}, module_kinds={module_kinds!r}, blocks={blocks!r}, "
            f"exclude_modules={exclude_modules!r}).{_unsupported_note(model, target_pattern)} "
            f"Linear/Conv2d modules: {_preview(candidates)}"
        )
    return targets


def _unsupported_note(model: nn.Module, pattern: str | tuple[str, ...] | None) -> str:
    """Name the modules the user targeted that no adapter can wrap (e.g. ConvTranspose2d, Embedding)."""
    if pattern is None:
        return ""
    hits = [
        f"{name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if name and matches(pattern, name) and not _adaptable(module) and not list(module.children())
    ]
    if not hits:
        return ""
    return f" Matched but not supported: {_preview(hits)}; adapters wrap nn.Linear and nn.Conv2d only."


def lbw_blocks(weights: Sequence[float], r: int) -> dict[str, dict[str, Any]]:
    """Turn an A1111 LoRA Block Weight vector into a ``blocks`` mapping for an sd-unet ``select_blocks`` call.

    Accepts 17 values (:data:`LBW17_BLOCK_IDS`), 25 (:data:`KOHYA_BLOCK_IDS`) or 26 (``BASE`` + the 25). A weight
    of 0 means no adapter in that sub-block; a weight w gives rank ``r`` with ``alpha = w * r`` (scale w), which is
    how LBW scales a LoRA's output. ``BASE`` is the text encoder, not in the UNet, and is dropped.
    """
    layouts = {17: LBW17_BLOCK_IDS, 25: KOHYA_BLOCK_IDS, 26: ("BASE", *KOHYA_BLOCK_IDS)}
    if len(weights) not in layouts:
        raise ValueError(f"an LBW vector has 17, 25 or 26 values, got {len(weights)}")
    rank = _check_rank(r, "", minimum=1)
    plan: dict[str, dict[str, Any]] = {}
    for sub_block, weight in zip(layouts[len(weights)], weights, strict=True):
        if sub_block != "BASE":
            plan[sub_block] = {"r": rank if weight else 0, "alpha": float(weight) * rank}
    return plan


def parse_blocks(text: str) -> list[str] | dict[str, Any]:
    """Blocks as users type them: '0-2,5' → ['0-2', '5']; a JSON object gives per-block settings, e.g.
    '{"0-2": 8, "5": 0}'."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"--blocks is not valid JSON: {exc}") from exc
    return [item.strip() for item in text.split(",") if item.strip()]
