"""The one import of Hugging Face `datasets` (optional: only local data files need it)."""

from __future__ import annotations

from typing import Any


def require_datasets() -> Any:
    """The `datasets` module, progress bars off; a clear error when it is not installed."""
    try:
        import datasets
    except ImportError as exc:
        raise SystemExit("reading local data files needs `pip install datasets` (or the runners extra)") from exc
    datasets.disable_progress_bars()
    return datasets
