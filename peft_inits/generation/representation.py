"""Adapters as token matrices: one token per adapted layer, read generically from each adapter's trained tensors.

What trains is what the method's weights class declares as `nn.Parameter` (SVFit's `s`, LoLDU's `z`, LoRA's
`lora_A`/`lora_B`, …); everything else in a saved adapter (fingerprints, σ_r, D, pivots) comes from the base model and
is the same for every adapter of a data set, so it is kept once as a *template* and copied into generated adapters.

Per layer the trained values become one vector:

- a layer whose trained tensors are a gain (its `factors()` down/up are frozen) contributes the raw values;
- a layer whose trained tensors *are* its down and up factors (LoRA: ΔW = B·A, with any B·G, G⁻¹·A giving the same
  adapter) is first put in a canonical gauge: ΔW = U S Vᵀ (from the factors, without forming ΔW), A' = S^½ Vᵀ,
  B' = U S^½, each component's sign fixed by the largest entry of U. A' and B' are what a generated adapter saves.

The `Codec` then normalises every coordinate (mean / std over the training set, DiffLoRA-free: the stored statistics
make generated values land in the trained adapters' units) and, for layers wider than `latent` values, projects them
on their top principal directions: a per-layer linear autoencoder fitted in closed form, the MSE-optimal one, which
with the few hundred adapters a data set holds needs no training (docs/adapter_generation.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..descriptors import delta_spectrum
from ..layers import adapter_layers

SAVED_INFIX = ".pi_adapters."  # saved key = <layer>.pi_adapters.<tensor> (PEFT strips the adapter name)


@dataclass(frozen=True)
class LayerLayout:
    """One adapted layer: its trained tensors (name, shape) and, for a trained factor pair, which is down and up."""

    name: str
    params: tuple[tuple[str, tuple[int, ...]], ...]
    pair: tuple[str, str] | None = None  # (down, up) parameter names when both factors train and there is no gain

    @property
    def width(self) -> int:
        if self.pair is not None:
            shapes = dict(self.params)
            down, up = shapes[self.pair[0]], shapes[self.pair[1]]
            return down[0] * (_numel(down[1:]) + up[0])
        return sum(_numel(shape) for _, shape in self.params)

    def key(self, param: str) -> str:
        return f"{self.name}{SAVED_INFIX}{param}"


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def discover_layout(model: nn.Module, adapter_name: str) -> list[LayerLayout]:
    """The layout of adapter `adapter_name` on `model` (layers in name order): trained tensors are its parameters."""
    layers = []
    for name, layer in sorted(adapter_layers(model, adapter_name).items()):
        weights = layer.pi_adapters[adapter_name]
        params = dict(weights.named_parameters())
        if not params:
            raise ValueError(f"{name}: the {weights.method} adapter trains no tensor; there is nothing to generate")
        down, gain, up = weights.factors()
        names = {id(p): n for n, p in params.items()}
        pair = None
        if gain is None and id(down) in names and id(up) in names and len(params) == 2:
            pair = (names[id(down)], names[id(up)])
        layers.append(
            LayerLayout(
                name.removeprefix("base_model.model."),
                tuple((n, tuple(p.shape)) for n, p in params.items()),
                pair,
            )
        )
    if not layers:
        raise ValueError(f"the model holds no layer with adapter {adapter_name!r}")
    return layers


def layout_to_json(layout: Sequence[LayerLayout]) -> list[dict[str, Any]]:
    return [asdict(layer) for layer in layout]


def layout_from_json(items: Sequence[Mapping[str, Any]]) -> list[LayerLayout]:
    return [
        LayerLayout(
            item["name"],
            tuple((name, tuple(shape)) for name, shape in item["params"]),
            tuple(item["pair"]) if item.get("pair") else None,
        )
        for item in items
    ]


# ------------------------------------------------------------------------------------------------ vectors


def canonical_pair(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """(A', B') with B'·A' = B·A in the gauge A' = S^½ Vᵀ, B' = U S^½, signs fixed by U's largest entries."""
    U, S, V = delta_spectrum(A.flatten(1), B.flatten(1))
    r = A.shape[0]
    U, S, V = U[:, :r], S[:r], V[:, :r]
    index = U.abs().argmax(dim=0)
    signs = torch.sign(U[index, torch.arange(U.shape[1])])
    signs[signs == 0] = 1
    root = S.clamp_min(0).sqrt()
    return ((V * signs * root).T).float().reshape(A.shape), (U * signs * root).float().reshape(B.shape)


def layer_vector(layer: LayerLayout, tensors: Mapping[str, Tensor], where: str) -> Tensor:
    """One layer's trained values as a float64 vector (a factor pair in its canonical gauge)."""
    values = {}
    for param, shape in layer.params:
        key = layer.key(param)
        if key not in tensors:
            raise ValueError(f"{where} lacks {key}: it is not an adapter of the generator's layout")
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{where}: {key} has shape {tuple(tensors[key].shape)}, the layout expects {shape}")
        values[param] = tensors[key].detach().double()
    if layer.pair is not None:
        A, B = canonical_pair(values[layer.pair[0]], values[layer.pair[1]])
        return torch.cat([B.double().flatten(), A.double().flatten()])
    return torch.cat([values[param].flatten() for param, _ in layer.params])


def vector_tensors(layer: LayerLayout, vector: Tensor) -> dict[str, Tensor]:
    """The saved tensors of one layer from its vector (the inverse of `layer_vector`)."""
    shapes = dict(layer.params)
    out = {}
    if layer.pair is not None:
        down, up = layer.pair
        size = _numel(shapes[up])
        out[layer.key(up)] = vector[:size].reshape(shapes[up])
        out[layer.key(down)] = vector[size:].reshape(shapes[down])
    else:
        offset = 0
        for param, shape in layer.params:
            size = _numel(shape)
            out[layer.key(param)] = vector[offset : offset + size].reshape(shape)
            offset += size
    return {key: value.float().contiguous() for key, value in out.items()}


def adapter_vectors(layout: Sequence[LayerLayout], tensors: Mapping[str, Tensor], where: str) -> list[Tensor]:
    return [layer_vector(layer, tensors, where) for layer in layout]


# ------------------------------------------------------------------------------------------------ codec


class Codec:
    """Per-coordinate normalisation, then a per-layer PCA for layers wider than `latent`; tokens padded to the
    widest layer's latent, with a mask of the real coordinates."""

    def __init__(self, means: list[Tensor], stds: list[Tensor], components: list[Tensor], scales: list[Tensor]):
        self.means, self.stds, self.components, self.scales = means, stds, components, scales

    @property
    def widths(self) -> list[int]:
        return [len(s) for s in self.scales]

    @property
    def token_width(self) -> int:
        return max(self.widths)

    def mask(self) -> Tensor:
        mask = torch.zeros(len(self.widths), self.token_width)
        for index, width in enumerate(self.widths):
            mask[index, :width] = 1
        return mask

    @classmethod
    def fit(cls, vectors: Sequence[Sequence[Tensor]], latent: int = 16) -> Codec:
        """Statistics from `vectors[adapter][layer]`; a coordinate that never varies gets std 1 (it stays exact)."""
        if len(vectors) < 2:
            raise ValueError(f"a generator needs at least two training adapters, got {len(vectors)}")
        means, stds, components, scales = [], [], [], []
        for index in range(len(vectors[0])):
            X = torch.stack([v[index] for v in vectors]).double()
            mean, std = X.mean(0), X.std(0)
            std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
            Z = (X - mean) / std
            if Z.shape[1] > latent:
                _, sigma, Vh = torch.linalg.svd(Z - Z.mean(0), full_matrices=False)
                k = max(1, min(latent, int((sigma > float(sigma[0]) * 1e-9).sum())))
                basis = Vh[:k]
                scale = (sigma[:k] / max(len(X) - 1, 1) ** 0.5).clamp_min(1e-12)
            else:
                basis = torch.empty(0)
                scale = torch.ones(Z.shape[1], dtype=torch.float64)
            means.append(mean)
            stds.append(std)
            components.append(basis)
            scales.append(scale)
        return cls(means, stds, components, scales)

    def encode(self, vectors: Sequence[Sequence[Tensor]]) -> Tensor:
        """(N, layers, token_width) float32 tokens, zero where the mask is 0."""
        out = torch.zeros(len(vectors), len(self.widths), self.token_width, dtype=torch.float64)
        for i, layers in enumerate(vectors):
            for j, vector in enumerate(layers):
                z = (vector.double() - self.means[j]) / self.stds[j]
                if self.components[j].numel():
                    z = self.components[j] @ z
                out[i, j, : len(z)] = z / self.scales[j]
        return out.float()

    def decode(self, tokens: Tensor) -> list[list[Tensor]]:
        """Per adapter, per layer: the trained-value vector of each token matrix (padding ignored)."""
        result = []
        for row in tokens.double():
            layers = []
            for j, width in enumerate(self.widths):
                z = row[j, :width] * self.scales[j]
                if self.components[j].numel():
                    z = z @ self.components[j]
                layers.append(z * self.stds[j] + self.means[j])
            result.append(layers)
        return result

    def explained_variance(self, vectors: Sequence[Sequence[Tensor]]) -> float:
        """1 − ‖x − decode(encode(x))‖² / ‖x − mean‖², in normalised units, over all layers (1: lossless)."""
        decoded = self.decode(self.encode(vectors))
        error = total = 0.0
        for original, restored in zip(vectors, decoded, strict=True):
            for j, (x, y) in enumerate(zip(original, restored, strict=True)):
                error += float((((x.double() - y) / self.stds[j]) ** 2).sum())
                total += float((((x.double() - self.means[j]) / self.stds[j]) ** 2).sum())
        return 1.0 - error / max(total, 1e-30)

    def tensors(self) -> dict[str, Tensor]:
        out = {}
        for j in range(len(self.widths)):
            out[f"mean.{j}"], out[f"std.{j}"] = self.means[j], self.stds[j]
            out[f"components.{j}"], out[f"scale.{j}"] = self.components[j], self.scales[j]
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], layers: int) -> Codec:
        try:
            parts = [[tensors[f"{kind}.{j}"].double() for j in range(layers)] for kind in ("mean", "std")]
            extra = [[tensors[f"{kind}.{j}"].double() for j in range(layers)] for kind in ("components", "scale")]
        except KeyError as exc:
            raise ValueError(f"the codec lacks {exc.args[0]}: it does not belong to this generator") from exc
        return cls(parts[0], parts[1], *extra)


def adapter_tensors(
    layout: Sequence[LayerLayout], template: Mapping[str, Tensor], vectors: Sequence[Tensor]
) -> dict[str, Tensor]:
    """A complete saved state: the template's frozen tensors with every trained tensor replaced by `vectors`."""
    state = {key: value.clone() for key, value in template.items()}
    for layer, vector in zip(layout, vectors, strict=True):
        for key, value in vector_tensors(layer, vector).items():
            state[key] = value.to(template[key].dtype) if key in template else value
    return state
