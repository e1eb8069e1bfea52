"""Our rows for PEFT's custom-model test matrix, one set per registered method, derived from the registry.

`run.py` splices these into the sdist's `tests/test_custom_models.py` right after its own rows, the way every PEFT
method adds its cases. The models are PEFT's: `MLP` (lin0 10→20, lin1 20→2), `Conv2d` (conv2d 5→10, 3×3; lin0 10→2)
and `Conv2d1x1` (conv2d 1→10, 1×1; lin0 90→2). Ranks respect min(m, n) for methods that decompose W; methods that
are not rank-bounded (LoRA) also get a row with r above the matrix rank, as PEFT's LoRA rows have.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import peft_inits  # noqa: F401  (registers the built-in methods)
from peft_inits.adapters import AdapterSpec
from peft_inits.layers import AdapterLayer
from peft_inits.registry import Method, methods

TAG = "peft_inits"  # every test name starts with it, so `-k peft_inits` selects exactly our rows
NON_IDENTITY = "non-identity init"  # in the names of rows whose option makes step 0 differ from the base model


def starts_at_identity(method: Method, options: dict[str, Any]) -> bool:
    """Whether the method with these options leaves a model unchanged at step 0 (ΔW = 0 on a random matrix)."""
    layer = AdapterLayer(nn.Linear(10, 20), "default", AdapterSpec(method.name, r=2, options=options))
    with torch.no_grad():
        return float(layer.get_delta_weight("default").abs().max()) <= 1e-6


def _rows(method: Method) -> list[tuple[str, str, type, dict[str, Any]]]:
    cls = method.config
    name = method.config_name.removesuffix("Config")
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ("MLP 1", "MLP", {"target_modules": "lin0", "r": 4}),
        ("MLP 2", "MLP", {"target_modules": ["lin0"], "r": 4}),
        ("MLP 3", "MLP", {"target_modules": ["lin1"], "r": 2}),
        ("MLP 4", "MLP", {"target_modules": ["lin0", "lin1"], "r": 2}),
        ("MLP 5 modules_to_save", "MLP", {"target_modules": ["lin0"], "modules_to_save": ["lin1"], "r": 4}),
        ("MLP 6 alpha", "MLP", {"target_modules": ["lin0", "lin1"], "r": 2, "alpha": 3.0}),
        ("MLP 7 embed_factors", "MLP", {"target_modules": ["lin0", "lin1"], "r": 2, "embed_factors": True}),
        ("MLP 8 exclude", "MLP", {"target_modules": ["lin0", "lin1"], "exclude_modules": ["lin1"], "r": 4}),
        ("Conv2d 1", "Conv2d", {"target_modules": ["conv2d"], "r": 4}),
        ("Conv2d 2", "Conv2d", {"target_modules": ["conv2d", "lin0"], "r": 2}),
        ("Conv2d1x1 1", "Conv2d1x1", {"target_modules": ["conv2d"], "r": 1}),
        ("Conv2d1x1 2", "Conv2d1x1", {"target_modules": ["conv2d", "lin0"], "r": 1}),
    ]
    if not method.rank_bounded:  # r above min(m, n) = 2 of lin1 and 1 of the 1×1 conv
        rows += [
            ("MLP 9 r>min(m,n)", "MLP", {"target_modules": ["lin1"], "r": 8}),
            ("Conv2d1x1 3 r>min(m,n)", "Conv2d1x1", {"target_modules": ["conv2d"], "r": 4}),
        ]
    for f in method.option_fields():  # every non-default choice of every option, once, on the two-layer MLP
        for choice in f.metadata.get("choices", ()):
            if choice == f.default:
                continue
            label = f"MLP {f.name}={choice}"
            if not starts_at_identity(method, {f.name: choice}):
                label += f" {NON_IDENTITY}"
            rows.append((label, "MLP", {"target_modules": ["lin0", "lin1"], "r": 2, f.name: choice}))
    return [(f"{TAG} {name} {label}", model_id, cls, kwargs) for label, model_id, kwargs in rows]


def _multi_rows(method: Method) -> list[tuple[str, str, type, dict[str, Any], dict[str, Any]]]:
    name = method.config_name.removesuffix("Config")
    one = {"target_modules": ["lin0"], "r": 4, "init_weights": False}
    tuner = f"{TAG}-{method.name}"  # PEFT's own "lora" tuner_method would call LoraModel-only API
    return [
        (f"{TAG} {name} Same", tuner, method.config, one, {**one, "seed": 1}),
        (
            f"{TAG} {name} Different",
            tuner,
            method.config,
            one,
            {"target_modules": ["lin1"], "r": 2, "init_weights": False},
        ),
    ]


TEST_CASES = [row for method in methods() for row in _rows(method)]
MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES = [row for method in methods() for row in _multi_rows(method)]
