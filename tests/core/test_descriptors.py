"""Adapter descriptors: invariances, refusals, and clustering/retrieval on a collection with known labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_cases import MLP
from peft import get_peft_model

from peft_inits import LoLDUConfig, LoRAConfig, SVFitConfig
from peft_inits.checkpoint import save_adapter
from peft_inits.collection import clustering_scores, index_collection, plot_map, retrieve
from peft_inits.descriptors import (
    AdapterRecord,
    delta_descriptor,
    delta_spectrum,
    factors_descriptor,
    gains_descriptor,
    record_from_model,
    record_from_peft_lora,
)
from peft_inits.export import export_peft_lora

STYLES = {"a": [0, 1], "b": [2, 3], "c": [4, 5]}  # which singular directions each "style" moves


def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP()


def _styled(config, style: str, seed: int):
    """An adapter whose training moved the gains of one style's directions, plus seed-dependent noise."""
    model = get_peft_model(_mlp(), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" not in name:
                continue
            noise = 0.02 * torch.randn(p.shape, generator=g) * p.abs().mean()
            p.add_(noise)
            if p.ndim == 1:
                p[STYLES[style]] *= 1.8
    return model


def _collection(config) -> list[AdapterRecord]:
    return [record_from_model(_styled(config, style, seed), label=style) for style in STYLES for seed in range(4)]


def test_delta_spectrum_matches_dense_svd():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(3, 20, generator=g, dtype=torch.float64), torch.randn(15, 3, generator=g, dtype=torch.float64)
    U, S, V = delta_spectrum(A, B)
    assert torch.allclose(S, torch.linalg.svdvals(B @ A)[:3], atol=1e-10)
    assert torch.allclose(U @ torch.diag(S) @ V.T, B @ A, atol=1e-10)


def test_delta_descriptor_is_invariant_to_lora_refactorisation_but_factors_are_not():
    base = _mlp()
    g = torch.Generator().manual_seed(1)
    pairs = {
        n: (torch.randn(3, w.shape[1], generator=g), torch.randn(w.shape[0], 3, generator=g))
        for n, w in (("fc1", base.fc1.weight), ("fc2", base.fc2.weight))
    }
    G = torch.randn(3, 3, generator=g) + 3 * torch.eye(3)
    moved = {n: (torch.linalg.solve(G, A), B @ G) for n, (A, B) in pairs.items()}
    other = {n: (torch.randn(3, A.shape[1], generator=g), B) for n, (A, B) in pairs.items()}
    records = [AdapterRecord("x", "lora", pairs), AdapterRecord("y", "lora", moved), AdapterRecord("z", "lora", other)]
    X = delta_descriptor(records, base)
    assert np.allclose(X[0], X[1], atol=1e-5)
    assert not np.allclose(X[0], X[2], atol=1e-2)
    F = factors_descriptor(records, base, components=3)
    assert not np.allclose(F[0], F[1], atol=1e-2)


@pytest.mark.parametrize(
    "config",
    [SVFitConfig(r=6, target_modules=["fc1", "fc2"]), LoLDUConfig(r=6, target_modules=["fc1", "fc2"])],
    ids=["svfit", "loldu"],
)
def test_identical_adapters_give_identical_descriptors(config):
    records = [record_from_model(_styled(config, "a", seed=7)) for _ in range(2)]
    for descriptor in (delta_descriptor, gains_descriptor):
        X = descriptor(records, _mlp())
        assert np.array_equal(X[0], X[1])


def test_a_record_for_another_base_is_refused():
    record = AdapterRecord("x", "lora", {"fc1": (torch.randn(2, 99), torch.randn(24, 2))})
    with pytest.raises(ValueError, match="fc1 is 24×99 but the base weight differs"):
        delta_descriptor([record], _mlp())
    with pytest.raises(ValueError, match="share no adapted module"):
        delta_descriptor([record, AdapterRecord("y", "lora", {"fc2": record.pairs["fc1"]})], _mlp())


def test_gains_need_weight_initialised_adapters():
    record = record_from_model(_styled(LoRAConfig(r=2, target_modules=["fc1"]), "a", 0))
    with pytest.raises(ValueError, match="needs adapters that train a gain"):
        gains_descriptor([record])


@pytest.mark.parametrize("method", ["svfit", "loldu"])
def test_styles_cluster_and_retrieve(method):
    config = {"svfit": SVFitConfig, "loldu": LoLDUConfig}[method](r=6, target_modules=["fc1", "fc2"])
    records = _collection(config)
    labels = [r.label for r in records]
    for descriptor in (gains_descriptor, delta_descriptor):
        X = descriptor(records, _mlp())
        scores = clustering_scores(X, labels, k=3)
        assert scores == {"ari": 1.0, "nmi": 1.0, "p@3": 1.0}, (descriptor.__name__, scores)
        assert all(labels[i] == "b" for i in retrieve(X, 4, k=3))


def test_peft_lora_files_are_read_with_their_scaling(tmp_path):
    model = _styled(SVFitConfig(r=3, target_modules=["fc1", "fc2"]), "a", 0)
    export_peft_lora(model, tmp_path)
    record = record_from_peft_lora(tmp_path, label="a")
    ours = record_from_model(model)
    for name, (A, B) in ours.pairs.items():
        A2, B2 = record.pairs[name]
        assert torch.allclose(B2 @ A2, B @ A, atol=1e-6)


def test_index_reports_a_corrupt_adapter_and_keeps_going(tmp_path):
    config = SVFitConfig(r=4, target_modules=["fc1", "fc2"])
    for i, style in enumerate(["a", "a", "b"]):
        path = save_adapter(_styled(config, style, seed=i), tmp_path / f"run{i}")
        (path / "meta.json").write_text(json.dumps({"label": style}))
    (tmp_path / "run1" / "adapter_model.safetensors").write_bytes(b"broken")
    foreign = save_adapter(get_peft_model(_mlp(seed=5), config), tmp_path / "foreign")
    collection = index_collection(tmp_path, _mlp(), progress=False)
    assert [r.label for r in collection.records] == ["a", "b"]
    assert set(collection.failures) == {str(tmp_path / "run1"), str(foreign)}
    assert "corrupt or truncated" in collection.failures[str(tmp_path / "run1")]
    assert "different base weight" in collection.failures[str(foreign)]
    X = delta_descriptor(collection.records, _mlp())
    png = plot_map(X, collection.labels, tmp_path / "map.png")
    assert png.stat().st_size > 1000


def test_collection_command_indexes_scores_and_maps(tmp_path, capsys):
    from tiny_models import tiny_roberta
    from transformers import AutoModel

    from peft_inits.cli.collection import main, parse_args

    base_dir = tmp_path / "base"
    tiny_roberta().save_pretrained(base_dir)
    for i, style in enumerate(["a", "a", "b", "b"]):
        model = get_peft_model(AutoModel.from_pretrained(base_dir), SVFitConfig(r=4))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "pi_adapters" in name:
                    p.mul_(1.5 if style == "a" else 0.5).add_(0.01 * i)
        path = save_adapter(model, tmp_path / "adapters" / f"run{i}")
        (path / "meta.json").write_text(json.dumps({"label": style}))
    result = main(
        parse_args(
            [
                str(tmp_path / "adapters"),
                "--base",
                str(base_dir),
                "--descriptor",
                "gains",
                "--neighbours",
                "1",
                "--map",
                str(tmp_path / "map.png"),
            ]
        )
    )
    assert result["adapters"] == 4 and result["skipped"] == 0
    assert result["ari"] == 1.0 and result["p@1"] == 1.0
    assert (tmp_path / "map.png").is_file() and '"ari": 1.0' in capsys.readouterr().out
