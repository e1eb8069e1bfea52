"""Read a run configuration file (TOML or YAML) into a flat dict of option names → values."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise SystemExit("reading TOML on Python 3.10 needs `pip install tomli`") from exc
    return tomllib.loads(text)


def _yaml_loads(text: str) -> Any:
    try:
        import yaml
    except ImportError as exc:
        raise SystemExit("reading YAML config files needs `pip install pyyaml` (or use TOML)") from exc
    return yaml.safe_load(text)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parse `path` by its suffix (.toml, .yaml/.yml). Option names may use dashes or underscores; a top-level
    table/mapping nests nothing: every key is a command-line option name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data = _toml_loads(text)
    elif suffix in (".yaml", ".yml"):
        data = _yaml_loads(text) or {}
    else:
        raise ValueError(f"config file {path} must end in .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in data.items()}
