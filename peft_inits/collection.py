"""Collections of adapters: index a folder, cluster, retrieve nearest neighbours, draw a 2-D map, score against labels.

peft-inits collection DIR --base MODEL_DIR [--descriptor delta] [--clusters K] [--map map.png]
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from tqdm import tqdm

from .checkpoint import adapter_dirs, load_adapter, verify_adapter_dir
from .descriptors import AdapterRecord, record_from_model, record_from_peft_lora

_RUN_SPECIFIC = ("seed", "base_model_name_or_path", "revision", "inference_mode")


@dataclass
class IndexedCollection:
    """The readable adapters of a folder, and what could not be read (path → reason)."""

    records: list[AdapterRecord]
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> list[str | None]:
        return [r.label for r in self.records]


def _label_of(directory: Path) -> str | None:
    meta = directory / "meta.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("label")
    return None


def _check_keys(directory: Path, tensors: dict[str, object], expected: set[str]) -> None:
    """The file must hold exactly the adapter tensors of its config: a missing one would keep another adapter's
    values in the shared wrapped model, an extra one belongs to a module this config does not target."""
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise ValueError(
            f"{directory / 'adapter_model.safetensors'} does not match its config: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )


def index_collection(root: str | Path, base: nn.Module, progress: bool = True) -> IndexedCollection:
    """Read every adapter under `root` onto `base` (never modified); an unreadable one is reported and skipped.

    SVFit/LoLDU factors are computed once per distinct config and reused: each further adapter only loads its gains
    into the same wrapped model, where the base-weight fingerprint is still checked. Every directory is verified
    first (config is a JSON object, no symlink out of the directory, weights intact, checksummed and finite).
    """
    collection = IndexedCollection(records=[])
    wrapped: dict[str, nn.Module] = {}
    expected: dict[str, set[str]] = {}
    for directory in tqdm(adapter_dirs(root), desc="indexing adapters", disable=not progress):
        try:
            config, tensors = verify_adapter_dir(directory)
            label = _label_of(directory)
            if config.get("peft_type") == "LORA":
                collection.records.append(record_from_peft_lora(directory, label))
                continue
            key = json.dumps({k: v for k, v in config.items() if k not in _RUN_SPECIFIC}, sort_keys=True)
            if key not in wrapped:
                model = load_adapter(copy.deepcopy(base), directory)
                keys = set(get_peft_model_state_dict(model))
                _check_keys(directory, tensors, keys)
                wrapped[key], expected[key] = model, keys
            else:
                _check_keys(directory, tensors, expected[key])
                set_peft_model_state_dict(wrapped[key], tensors)
            collection.records.append(record_from_model(wrapped[key], str(directory), label))
        except Exception as exc:  # one bad adapter must never stop the indexing of hundreds
            collection.failures[str(directory)] = f"{type(exc).__name__}: {exc}"
    return collection


# ------------------------------------------------------------------------------------------------ analysis


def cosine_similarity(X: np.ndarray) -> np.ndarray:
    unit = X / np.linalg.norm(X, axis=1, keepdims=True).clip(min=1e-12)
    return unit @ unit.T


def retrieve(X: np.ndarray, query: int | np.ndarray, k: int = 5) -> list[int]:
    """Indices of the k nearest adapters by cosine similarity (the query itself excluded when it is an index)."""
    vector = X[query] if isinstance(query, (int, np.integer)) else np.asarray(query)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True).clip(min=1e-12)
    scores = unit @ (vector / max(np.linalg.norm(vector), 1e-12))
    if isinstance(query, (int, np.integer)):
        scores[query] = -np.inf
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def precision_at_k(X: np.ndarray, labels: Sequence[str], k: int = 5) -> float:
    """Mean share of each adapter's k nearest neighbours that carry its label."""
    labels = np.asarray(labels)
    hits = [np.mean(labels[retrieve(X, i, k)] == labels[i]) for i in range(len(labels))]
    return float(np.mean(hits))


def cluster(X: np.ndarray, k: int, method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Cluster ids from k-means or average-linkage agglomerative clustering on cosine distance."""
    from sklearn.cluster import AgglomerativeClustering, KMeans

    unit = X / np.linalg.norm(X, axis=1, keepdims=True).clip(min=1e-12)
    if method == "kmeans":
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(unit)
    if method == "agglomerative":
        return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(unit)
    raise ValueError(f"unknown clustering method {method!r}; use 'kmeans' or 'agglomerative'")


def clustering_scores(X: np.ndarray, labels: Sequence[str], method: str = "kmeans", k: int = 5) -> dict[str, float]:
    """ARI and NMI of a clustering with as many clusters as labels, plus retrieval precision@k."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    predicted = cluster(X, len(set(labels)), method)
    return {
        "ari": float(adjusted_rand_score(labels, predicted)),
        "nmi": float(normalized_mutual_info_score(labels, predicted)),
        f"p@{k}": precision_at_k(X, labels, k),
    }


def plot_map(X: np.ndarray, labels: Sequence[str | None], path: str | Path, title: str = "") -> Path:
    """2-D PCA map of the descriptors, coloured by label, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = X - X.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    xy = u[:, :2] * s[:2] if len(s) >= 2 else np.c_[u[:, 0] * s[0], np.zeros(len(X))]
    fig, ax = plt.subplots(figsize=(6, 5))
    names = [str(label) for label in labels]
    for label in sorted(set(names)):
        mask = np.array([n == label for n in names])
        ax.scatter(xy[mask, 0], xy[mask, 1], label=label, s=30)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
