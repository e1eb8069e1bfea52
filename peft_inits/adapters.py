"""The weights of one adapter on one matrix, as (down, gain, up) factors: the interface every method implements.

Frozen factors are buffers, trainable tensors are parameters. Methods that decompose the base weight
(`DecomposedWeights`) recompute their factors when a model is built and do not save them unless `embed_factors` is
set; what they save (trained tensors, a reference such as σ_r or D_r, and a fingerprint of the base weight) is
enough to refuse an adapter that is loaded onto a different base model. The methods themselves live in
`peft_inits/methods/`, one file each.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import functional as Fn
from .registry import MethodOptions, get_method

RANDOM_INIT_SEED_OFFSET = 1_000_003  # init_weights=False draws from a stream apart from the method's own seed
DECOMPOSE_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Relative tolerance of a saved reference (σ_r, D_r) against its recomputed value, by the coarsest of the dtypes
# involved (the saved tensor's, the base weight's now and when it was saved): decomposition noise in fp32, rounding
# of the weights or of the saved values in half precision.
REFERENCE_RTOL = {torch.float64: 1e-3, torch.float32: 1e-3, torch.float16: 5e-3, torch.bfloat16: 3e-2}
_ALLOW_OTHER_BASE: contextvars.ContextVar[bool] = contextvars.ContextVar("allow_other_base", default=False)

Commit = Callable[[], None]  # applies what a verified load needs (e.g. re-pinned factors); runs after every check


@contextlib.contextmanager
def allow_other_base() -> Iterator[None]:
    """Load adapters whose base-weight fingerprint differs from the model's (on purpose: e.g. a LoRA moved to a
    fine-tuned copy of its base). Methods whose factors come from the base still refuse a mismatched reference."""
    token = _ALLOW_OTHER_BASE.set(True)
    try:
        yield
    finally:
        _ALLOW_OTHER_BASE.reset(token)


def reference_rtol(*dtypes: torch.dtype) -> float:
    return max(REFERENCE_RTOL.get(dtype, 1e-3) for dtype in dtypes)


def saved_base_dtype(fingerprint: Tensor) -> tuple[torch.dtype, ...]:
    """The dtype of the base weight a saved adapter was made on, from its fingerprint's roundoff ((): not recorded)."""
    values = _fingerprint_values(fingerprint)
    if values.numel() < 5:
        return ()
    return tuple(d for d in REFERENCE_RTOL if Fn.unit_roundoff(d) == float(values[4]))


@dataclass(frozen=True)
class AdapterSpec:
    """Everything needed to build one adapter on one matrix (a config resolves one per target module)."""

    method: str
    r: int
    alpha: float | None = None
    seed: int = 0
    embed_factors: bool = False
    decompose_dtype: str = "float32"
    init_weights: bool = True  # False: `AdapterWeights.init_random` replaces the method's init (PEFT's convention)
    options: Any = field(default=None)  # the method's MethodOptions (a mapping is converted)

    def __post_init__(self) -> None:
        method = get_method(self.method)
        if self.decompose_dtype not in DECOMPOSE_DTYPES:
            raise ValueError(f"decompose_dtype must be one of {sorted(DECOMPOSE_DTYPES)}, got {self.decompose_dtype!r}")
        object.__setattr__(self, "options", method.make_options(self.options))

    @property
    def resolved_alpha(self) -> float:
        return float(self.r if self.alpha is None else self.alpha)

    @property
    def scale(self) -> float:
        return self.resolved_alpha / self.r

    @property
    def dtype(self) -> torch.dtype:
        return DECOMPOSE_DTYPES[self.decompose_dtype]


class AdapterWeights(nn.Module):
    """Base of the per-method weights: exposes (down, gain, up, scale) and nothing else to the layers.

    A method implements `__init__(weight, spec)`, `factors()` and `trainable_count`; `relative_gain` is its
    descriptor hook (the trained vector relative to its init, for methods that train a gain).
    """

    method: ClassVar[str]  # set by register_method
    # True: __init__ computes `Fn.checked_fingerprint` itself (to reuse ‖W‖ in its decomposition) and attaches it;
    # otherwise `build_adapter` does, and that is the weight's one finiteness check.
    attaches_fingerprint: ClassVar[bool] = False
    pending: bool = False  # built for a base weight still on the meta device: `materialize` rebuilds it
    spec: AdapterSpec  # set by build_adapter

    def __init__(self, r: int, scale: float) -> None:
        super().__init__()
        self.r = r
        self.scale = scale

    def factors(self) -> tuple[Tensor, Tensor | None, Tensor]:
        """(down R: r×n, gain g: r or None for all ones, up C: m×r)."""
        raise NotImplementedError

    @classmethod
    def trainable_count(cls, options: MethodOptions, r: int, m: int, n: int) -> int:
        """Closed-form number of trained values of one adapter on an m × n matrix."""
        raise NotImplementedError

    def relative_gain(self) -> Tensor | None:
        """The trained gain relative to its init, one value per component; None for methods without a gain."""
        return None

    def factor_key(self) -> Hashable | None:
        """Equal keys mean identical down and up factors, so a mixed batch serves those adapters with one down- and
        one up-projection and a gathered gain per sample; None (the default): factors of its own."""
        return None

    def attach_fingerprint(self, fingerprint: Tensor) -> None:
        """Record which base weight this adapter was built on (`Fn.weight_fingerprint`; saved, checked on load).
        Kept as the int64 bit pattern of float64 values so `model.half()` or PEFT's dtype casts cannot round it."""
        bits = fingerprint.double().cpu().view(torch.int64)
        self.register_buffer("fingerprint", bits.to(self._device()))
        self._own_fingerprint = bits.clone()  # what the factors were computed from
        self._checked: tuple[int, int] | None = None

    def check_before_use(self) -> None:
        """Loaders that assign tensors directly (transformers' `load_adapter` bypasses `load_state_dict`) can
        overwrite the saved fingerprint without the tuner's load check seeing it: compare it with the base weight
        this adapter was built on whenever the buffer changed since the last check (two integers per call otherwise)."""
        fp = self.fingerprint
        if fp.is_meta:
            return
        state = (fp.data_ptr(), fp._version)
        if state == self._checked:
            return
        if not self._fingerprint_matches(fp) and not _ALLOW_OTHER_BASE.get():
            raise self._other_base_error(f"this {self.method} adapter", fp)
        self._checked = state

    def _fingerprint_matches(self, saved: Tensor) -> bool:
        stored = _fingerprint_values(saved)
        own = self._own_fingerprint.view(torch.float64)
        return stored.shape in FINGERPRINT_SHAPES and Fn.fingerprints_match(stored, own)

    def _other_base_error(self, what: str, saved: Tensor) -> ValueError:
        return ValueError(
            f"{what} was trained on a different base weight (fingerprint {_fingerprint_values(saved).tolist()} vs "
            f"{self._own_fingerprint.view(torch.float64).tolist()}); load it onto the model it was made for, or on "
            "purpose inside peft_inits.adapters.allow_other_base()"
        )

    def init_random(self, generator: torch.Generator) -> None:
        """`init_weights=False`: overwrite the trained tensors with a random init whose ΔW is not zero.

        PEFT's test matrix uses it so that save/load/merge checks compare something; each method says what random
        means for it (the frozen factors and saved references stay as they are, so loading still verifies them).
        """
        raise NotImplementedError(f"method {self.method!r} defines no random init; use init_weights=True")

    def materialize(self, weight: Tensor) -> AdapterWeights:
        """The adapter rebuilt from the real base weight, with the tensors loaded while it was pending (verified
        against that weight like any load), the trainable flags kept. Returns self when not pending."""
        if not self.pending:
            return self
        if weight.is_meta:
            raise ValueError(
                f"this {self.method} adapter is computed from its base weight, which is still on the meta device; "
                "load the base model's weights before using the adapter"
            )
        fresh = build_adapter(weight, self.spec)
        state = getattr(self, "pending_state", None)
        if state:
            commit = fresh.verify(state, self.method, weight)
            if commit is not None:
                commit()
            fresh.__dict__["_preverified"] = True
            fresh.load_state_dict(state, strict=False)
        trainable = {n: p.requires_grad for n, p in self.named_parameters()}
        for name, param in fresh.named_parameters():
            param.requires_grad_(trainable.get(name, param.requires_grad))
        return fresh

    def _device(self) -> torch.device:
        tensor = next(iter(self.state_dict().values()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def verify(self, state: Mapping[str, Tensor], where: str, weight: Tensor | None) -> Commit | None:
        """Check tensors about to be loaded into this adapter (keys without prefix) against the live base `weight`
        (None: unknown); raise a ValueError naming `where` and the problem. May return a commit to run once every
        check of the load passed."""
        saved = state.get("fingerprint")
        if saved is None:
            raise ValueError(f"{where}: adapter file has no base-weight fingerprint; refusing to load it")
        if self._fingerprint_matches(saved):  # against `_own_fingerprint`: never on the meta device, unlike the buffer
            return None
        if not _ALLOW_OTHER_BASE.get():
            raise self._other_base_error(f"{where}: this {self.method} adapter", saved)

        def accept() -> None:  # the file's fingerprint is copied in: later checks before use must accept it
            self._own_fingerprint = _fingerprint_values(saved).cpu().clone().view(torch.int64)

        return accept

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # The tuner verifies a whole file before anything loads; this covers modules loaded on their own.
        owned = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if self.pending:  # nothing to verify against yet: keep the saved tensors for `materialize`
            self.pending_state = owned
            return
        if owned and not self.__dict__.pop("_preverified", False):
            self.verify(owned, prefix.rstrip(".") or self.method, None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self) -> str:
        return f"method={self.method}, r={self.r}, scale={self.scale:g}"


FINGERPRINT_SHAPES = ((4,), (5,))  # 4: saved before the weight's roundoff was recorded (2026-12-05)


def _fingerprint_values(saved: Tensor) -> Tensor:
    """A stored fingerprint as float64 values (saved as the int64 bit pattern, or as floats by other writers)."""
    saved = saved.detach()
    return saved.view(torch.float64) if saved.dtype == torch.int64 else saved.double()


def set_random(param: Tensor, values: Tensor) -> None:
    """Write a random init into a trained tensor, keeping its dtype and device."""
    param.copy_(values.to(param))


def relative_change(change: Tensor, init: Tensor) -> Tensor:
    """change / |init|, with a floor so a zero init cannot divide by zero; float32 on the CPU."""
    floor = 1e-6 * float(init.abs().max().clamp_min(1e-12))
    return (change / init.abs().clamp_min(floor)).detach().float().cpu()


class DecomposedWeights(AdapterWeights):
    """Storage and load-time verification of methods whose frozen factors come from a decomposition of W: the
    factors are recomputed from the live base weight, so a saved reference (σ_r, D_r, ...) must match them."""

    reference_name: ClassVar[str]  # a saved buffer that must match its recomputed value on load

    # True where down and up are frozen buffers computed from (W, method options) alone (SVFit, LoLDU): adapters of
    # one base then share them. False where they train (PiSSA, MiLoRA).
    shares_factors: ClassVar[bool] = False

    def factor_key(self) -> Hashable | None:
        """(method, rank, options, decomposition dtype, the base's fingerprint, the method's own `factor_choices`, the
        factors' dtype and device) — not a comparison of the factor tensors. Factors loaded from a file
        (`embed_factors`) are never assumed shared."""
        if not self.shares_factors or self.embed_factors:
            return None
        stamp = tuple((t.data_ptr(), t._version) for t in self.buffers())  # any load or cast changes it
        cached = self.__dict__.get("_factor_key")
        if cached is None or cached[0] != stamp:
            spec, down = self.spec, self.down
            fingerprint = tuple(self._own_fingerprint.tolist())
            key = (type(self), self.r, spec.options, spec.decompose_dtype, fingerprint, self.factor_choices())
            self.__dict__["_factor_key"] = cached = (stamp, (*key, down.dtype, down.device))
        return cached[1]

    def factor_choices(self) -> tuple:
        """What besides W and the options decided the factors (e.g. a seed, a saved pivot order)."""
        return ()

    def store_factors(self, weight: Tensor, down: Tensor, up: Tensor, embed: bool) -> None:
        self.register_buffer("down", down.contiguous(), persistent=embed)
        self.register_buffer("up", up.contiguous(), persistent=embed)
        self.embed_factors = embed

    def verify(self, state: Mapping[str, Tensor], where: str, weight: Tensor | None) -> Commit | None:
        commit = super().verify(state, where, weight)
        saved_ref = state.get(self.reference_name)
        own_ref = getattr(self, self.reference_name)
        if saved_ref is None:
            raise ValueError(f"{where}: adapter file has no {self.reference_name}; refusing to load it")
        if saved_ref.shape != own_ref.shape:
            raise ValueError(
                f"{where}: checkpoint has rank {saved_ref.shape[0]} but this model's adapter has rank "
                f"{own_ref.shape[0]}; build the model with the checkpoint's config"
            )
        if "down" in state or own_ref.is_meta:  # embedded factors load as saved; meta: checked when materialised
            return commit
        repinned = None if weight is None else self.repin(state, weight)
        ref = own_ref if repinned is None else repinned[self.reference_name]
        base_dtypes = saved_base_dtype(state["fingerprint"]) + (() if weight is None else (weight.dtype,))
        rtol = reference_rtol(saved_ref.dtype, *base_dtypes)
        tol = rtol * float(ref.abs().max().clamp_min(1e-12))
        if not torch.allclose(saved_ref.to(ref), ref, rtol=rtol, atol=tol):
            raise ValueError(
                f"{where}: recomputed {self.reference_name} differs from the saved one (beyond the {rtol:g} relative "
                f"tolerance for {saved_ref.dtype} values); the base weight or the decomposition options differ from "
                "training (save with embed_factors=True to pin the factors)"
            )
        if repinned is None:
            return commit

        def apply() -> None:
            if commit is not None:
                commit()
            for name, value in repinned.items():
                getattr(self, name).copy_(value)

        return apply

    def repin(self, state: Mapping[str, Tensor], weight: Tensor) -> dict[str, Tensor] | None:
        """Buffers recomputed to follow choices saved in the file (e.g. LoLDU's pivot order, which a half-precision
        copy of the base may break), or None when the recomputed factors already follow them."""
        return None


def build_adapter(weight: Tensor, spec: AdapterSpec) -> AdapterWeights:
    """Build the adapter weights for `weight` (kept fp32 whatever the model dtype; decomposed in fp32/fp64).

    A base weight on the meta device (a model initialised empty, weights loaded later) gets a pending adapter of the
    right shapes, built from a seeded stand-in and moved to meta; `AdapterWeights.materialize` recomputes it from
    the real weight at first use and verifies what was loaded into it meanwhile.
    """
    method = get_method(spec.method)
    m, n = Fn.weight_matrix(weight).shape
    method.check_rank(spec.r, m, n)
    if weight.is_meta:
        stand_in = torch.randn(weight.shape, generator=torch.Generator().manual_seed(spec.seed))
        weights = build_adapter(stand_in, spec).to("meta")
        weights.pending = True
        return weights
    if method.weights.attaches_fingerprint:
        weights = method.weights(weight, spec)
    else:
        fingerprint = Fn.checked_fingerprint(weight, "base weight")  # also the one finiteness check of W
        weights = method.weights(weight, spec)
        weights.attach_fingerprint(fingerprint)
    weights.spec = spec
    if not spec.init_weights and not any(p.is_meta for p in weights.parameters()):  # meta: a checkpoint fills it
        with torch.no_grad():
            weights.init_random(torch.Generator().manual_seed(spec.seed + RANDOM_INIT_SEED_OFFSET))
    return weights


def trainable_count(spec: AdapterSpec, m: int, n: int) -> int:
    """Closed-form trainable values of one adapter on an m × n matrix (each method states its own formula)."""
    return get_method(spec.method).weights.trainable_count(spec.options, spec.r, m, n)
