"""The weight generator on synthetic collections: codec maths, gauge-free LoRA factors, conditional sampling."""

import pytest
import torch

from peft_inits.generation.generator import (
    Denoiser,
    FeatureNormaliser,
    GeneratorSettings,
    TokenRows,
    distance_to,
    generator_task,
    sample_tokens,
)
from peft_inits.generation.representation import Codec, LayerLayout, canonical_pair, layer_vector, vector_tensors
from peft_inits.training.run import execute
from peft_inits.training.settings import AdapterSettings, TrainSettings

WIDTHS = (2, 3, 5)  # three "layers" of different widths: padding and masks are exercised


def clusters(count: int, seed: int):
    """Two well-separated clusters of per-layer gain vectors with distinguishable condition features."""
    generator = torch.Generator().manual_seed(seed)
    centres = {name: [sign * (1.0 + torch.arange(w, dtype=torch.float64)) for w in WIDTHS] for name, sign in
               (("A", 1.0), ("B", -1.0))}  # fmt: skip
    vectors, features = [], []
    for index in range(count):
        name = "AB"[index % 2]
        vectors.append([c + 0.2 * torch.randn(len(c), generator=generator, dtype=torch.float64) for c in centres[name]])
        one_hot = torch.tensor([1.0, 0.0] if name == "A" else [0.0, 1.0], dtype=torch.float64)
        features.append(torch.cat([one_hot, 0.1 * torch.randn(3, generator=generator, dtype=torch.float64)]))
    return vectors, torch.stack(features), centres


def test_samples_conditioned_on_a_cluster_land_near_that_cluster(tmp_path):
    vectors, features, centres = clusters(40, seed=0)
    codec = Codec.fit(vectors, latent=16)
    tokens = codec.encode(vectors)
    normaliser = FeatureNormaliser.fit({"f": features})
    rows = TokenRows(tokens, normaliser({"f": features}))
    settings = GeneratorSettings(width=32, depth=2, heads=2)
    mask = codec.mask()
    execute(
        output_dir=tmp_path / "run",
        build_model=lambda: Denoiser(len(WIDTHS), codec.token_width, {"f": 5}, settings),
        adapter=AdapterSettings(method="full", head_modules=[]),
        train_settings=TrainSettings(
            steps=300, batch_size=16, lr=2e-3, warmup=20, eval_every=300, mixed_precision="no", progress=False
        ),
        task=generator_task(rows, rows, mask, settings),
        config={"test": "clusters"},
    )
    from safetensors.torch import load_file

    model = Denoiser(len(WIDTHS), codec.token_width, {"f": 5}, settings)
    model.load_state_dict(load_file(str(tmp_path / "run" / "weights" / "model.safetensors")))
    queries = {"A": torch.tensor([1.0, 0, 0, 0, 0]), "B": torch.tensor([0, 1.0, 0, 0, 0])}
    means = {name: codec.encode([centres[name]])[0] for name in "AB"}
    for name, query in queries.items():
        condition = normaliser({"f": query.double().expand(8, -1)})
        samples = sample_tokens(model, condition, mask, steps=25, guidance=2.0, seed=1)
        near, far = distance_to(samples, means[name], mask), distance_to(samples, means["BA"[name == "B"]], mask)
        assert (near < far).all(), (name, near, far)
        assert float(near.mean()) < 0.5 * float(far.mean())
        decoded = codec.decode(samples)  # back in raw units: the first coordinate's sign is the cluster's
        sign = 1 if name == "A" else -1
        assert all(sign * float(layers[0][0]) > 0 for layers in decoded)
    assert torch.all(samples * (1 - mask) == 0)  # padding stays zero


def test_codec_round_trip_and_pca_of_wide_layers():
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 40, generator=generator, dtype=torch.float64)
    wide = [torch.randn(3, generator=generator, dtype=torch.float64) @ basis + 5.0 for _ in range(12)]
    narrow = [torch.randn(4, generator=generator, dtype=torch.float64) for _ in range(12)]
    constant = [torch.ones(2, dtype=torch.float64) for _ in range(12)]  # never varies: std 1, decoded exactly
    vectors = [[w, n, c] for w, n, c in zip(wide, narrow, constant, strict=True)]
    codec = Codec.fit(vectors, latent=8)
    assert codec.widths == [3, 4, 2]  # the wide layer's data has rank 3: three components kept
    assert codec.token_width == 4 and codec.mask().sum() == 9
    decoded = codec.decode(codec.encode(vectors))
    for original, restored in zip(vectors, decoded, strict=True):
        for x, y in zip(original, restored, strict=True):
            torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-6)  # tokens are float32
    assert codec.explained_variance(vectors) == pytest.approx(1.0, abs=1e-9)
    tokens = codec.encode(vectors)
    assert tokens[:, 0, :3].std(0).mean() == pytest.approx(1.0, abs=0.05)  # latent components have unit scale
    again = Codec.from_tensors(codec.tensors(), 3)
    torch.testing.assert_close(again.encode(vectors), tokens)
    with pytest.raises(ValueError, match="at least two training adapters"):
        Codec.fit(vectors[:1])


def test_lora_factors_are_read_in_one_gauge():
    """(B·G, G⁻¹·A) is the same LoRA: the canonical factors agree, and their product is still ΔW."""
    generator = torch.Generator().manual_seed(0)
    A, B = torch.randn(3, 7, generator=generator), torch.randn(5, 3, generator=generator)
    G = torch.randn(3, 3, generator=generator) + 3 * torch.eye(3)
    A1, B1 = canonical_pair(A, B)
    A2, B2 = canonical_pair(torch.linalg.solve(G, A), B @ G)
    torch.testing.assert_close(A1, A2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(B1, B2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(B1 @ A1, B @ A, atol=1e-4, rtol=1e-4)
    layer = LayerLayout("blocks.0.q", (("lora_A", (3, 7)), ("lora_B", (5, 3))), pair=("lora_A", "lora_B"))
    assert layer.width == 3 * (7 + 5)
    vector = layer_vector(layer, {layer.key("lora_A"): A, layer.key("lora_B"): B}, "test")
    back = vector_tensors(layer, vector)
    torch.testing.assert_close(back[layer.key("lora_B")] @ back[layer.key("lora_A")], B @ A, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"lacks blocks\.0\.q\.pi_adapters\.lora_B"):
        layer_vector(layer, {layer.key("lora_A"): A}, "test")
    with pytest.raises(ValueError, match="has shape"):
        layer_vector(layer, {layer.key("lora_A"): A.T, layer.key("lora_B"): B}, "test")


def test_feature_normaliser_refuses_another_extractor():
    normaliser = FeatureNormaliser.fit({"judge": torch.randn(6, 4, dtype=torch.float64)})
    with pytest.raises(ValueError, match="lack the feature source"):
        normaliser({"vae": torch.zeros(1, 4)})
    with pytest.raises(ValueError, match="gives 3 values but the generator was trained on 4"):
        normaliser({"judge": torch.zeros(1, 3)})


def test_training_conditions_are_means_of_reference_subsets():
    """Rows of 3 and 2 images: each batch condition is the mean of a non-empty subset of its own row's images."""
    import itertools

    images = torch.tensor([[[1.0], [2.0], [4.0]], [[8.0], [16.0], [0.0]]])  # row 1's third slot is padding
    counts = torch.tensor([3, 2])
    means = {"f": images.sum(1) / counts[:, None]}
    rows = TokenRows(torch.zeros(2, 1, 1), means, {"f": images}, counts, keep=0.5)
    allowed = [
        {sum(c) / len(c) for k in (1, 2, 3) for c in itertools.combinations((1.0, 2.0, 4.0), k)},
        {8.0, 16.0, 12.0},
    ]
    seen = [set(), set()]
    torch.manual_seed(0)
    for _ in range(60):
        condition = rows.batch([0, 1])["conditions"]["f"][:, 0]
        for row in (0, 1):
            value = round(float(condition[row]), 6)
            assert any(abs(value - a) < 1e-5 for a in allowed[row]), (row, value)
            seen[row].add(value)
    assert len(seen[0]) >= 5 and len(seen[1]) == 3  # subsets vary; padding never enters
    full = TokenRows(torch.zeros(2, 1, 1), means, {"f": images}, counts, keep=1.0).batch([0, 1])
    torch.testing.assert_close(full["conditions"]["f"], means["f"])
    with pytest.raises(ValueError, match="reference_keep"):
        GeneratorSettings(reference_keep=0.0)
