"""Pytest fixtures of the runner tests (loaded with `pytest_plugins`): tiny checkpoints, data files, a cache."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from runner_helpers import minilm_path, write_sentiment_csv
from tiny_models import tiny_vit

from peft_inits.training import vit_models


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A 2-layer, width-32 BERT with the real MiniLM tokenizer, saved as a local checkpoint (no head)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    return write_sentiment_csv(tmp_path_factory.mktemp("data") / "tweets.csv")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """train/validation folders of 16×16 PNGs, 3 classes told apart by colour."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = random.Random(0)
    for split, count in (("train", 8), ("validation", 3)):
        for label, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                noisy = tuple(min(255, max(0, c + rng.randint(-30, 30))) for c in colour)
                Image.new("RGB", (16, 16), noisy).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """transformers 3-class ViT classifier (16 px, 8 px patches) saved as a local checkpoint."""
    path = tmp_path_factory.mktemp("tiny-vit")
    tiny_vit(num_labels=3).save_pretrained(path)
    return path


@pytest.fixture
def quick_digits(monkeypatch):
    """Make the digits protocol's ViT pretraining take seconds (its cache key changes with these settings)."""
    monkeypatch.setattr(
        vit_models, "DIGITS_PRETRAIN", {**vit_models.DIGITS_PRETRAIN, "steps": 120, "lr": 3e-3, "head_lr": 3e-3}
    )
    monkeypatch.setattr(vit_models, "DIGITS_VIT", {**vit_models.DIGITS_VIT, "hidden_size": 32, "num_hidden_layers": 2})
