"""The model cases of the adapter test matrix: how to build each base model, feed it and where to put adapters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tiny_models
import torch
from torch import nn


class MLP(nn.Module):
    """Two Linears with odd sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(13, 24)
        self.fc2 = nn.Linear(24, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class ConvNet(nn.Module):
    """Convs with stride, padding and dilation, so LoCon must honour the base geometry."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=2, dilation=2, bias=False)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(torch.relu(self.conv1(x)))
        return self.head(h.mean(dim=(2, 3)))


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build().eval()

    return make


def _unet_inputs(model: nn.Module, dtype: torch.dtype) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    size = cfg.sample_size
    return {
        "sample": torch.randn(1, cfg.in_channels, size, size, generator=g).to(dtype),
        "timestep": torch.tensor([10]),
        "encoder_hidden_states": torch.randn(1, 4, cfg.cross_attention_dim, generator=g).to(dtype),
    }


@dataclass
class ModelCase:
    """A base model, its inputs and the adapter placement used for it."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[nn.Module, torch.dtype], dict[str, Any]]
    output: Callable[[Any], torch.Tensor]
    select: dict[str, Any] = field(default_factory=dict)
    has_conv: bool = False

    def run(self, model: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        with torch.no_grad():
            return self.output(model(**self.inputs(model, dtype))).float()


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


CASES = [
    ModelCase(
        "mlp",
        _seeded(MLP),
        lambda m, dt: {"x": torch.randn(5, 13, generator=_gen()).to(dt)},
        lambda out: out,
        {"target_modules": ["fc1", "fc2"]},
    ),
    ModelCase(
        "conv",
        _seeded(ConvNet),
        lambda m, dt: {"x": torch.randn(2, 3, 9, 9, generator=_gen()).to(dt)},
        lambda out: out,
        {"target_modules": ["conv1", "conv2"]},
        has_conv=True,
    ),
    ModelCase(
        "roberta",
        _seeded(tiny_models.tiny_roberta),
        lambda m, dt: {"input_ids": torch.randint(3, 100, (2, 7), generator=_gen())},
        lambda out: out.logits,
    ),
    ModelCase(
        "vit",
        _seeded(tiny_models.tiny_vit),
        lambda m, dt: {"pixel_values": torch.randn(2, 3, 16, 16, generator=_gen()).to(dt)},
        lambda out: out.logits,
    ),
    ModelCase(
        "unet",
        _seeded(tiny_models.tiny_unet),
        _unet_inputs,
        lambda out: out.sample,
        {"blocks": ["upper"], "module_kinds": ["attn", "resnet"]},
        has_conv=True,
    ),
]
CASE_BY_NAME = {case.name: case for case in CASES}
