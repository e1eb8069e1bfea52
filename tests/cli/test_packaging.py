"""Nothing of ours is importable under a third-party name (the wheel's contents: tests/helpers/wheel_smoke.py).

transformers ≥ 5.25 imports the PyPI package `kernels` while it loads; a top-level `kernels/` package in the checkout
shadowed it whenever the repository root was on sys.path (`python -m pytest`, `python -m …`, a notebook).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = "peft-inits"


def _root_import_names() -> dict[str, Path]:
    """Every top-level name the repository root offers to `import` when it is on sys.path."""
    names = {}
    for entry in ROOT.iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir() and entry.name.isidentifier():
            names[entry.name] = entry
        elif entry.suffix == ".py" and entry.stem.isidentifier():
            names[entry.stem] = entry
    return names


def test_no_name_at_the_root_shadows_an_installed_distribution():
    installed = importlib.metadata.packages_distributions()
    for name, entry in _root_import_names().items():
        owners = {d.lower().replace("_", "-") for d in installed.get(name, ())}
        if not owners or owners == {OURS}:
            continue
        # a folder without __init__.py is only a namespace portion: an installed regular package wins over it
        result = subprocess.run(
            [sys.executable, "-c", f"import importlib.util as u; print(u.find_spec({name!r}).origin)"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        origin = Path(result.stdout.strip()).resolve()
        assert ROOT not in origin.parents, f"{entry} shadows the installed {sorted(owners)} ({origin})"


def test_nothing_of_ours_is_a_top_level_kernels_package():
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert importlib.util.find_spec("peft_inits.kernels") is not None


def test_transformers_and_diffusers_import_from_the_repository_root():
    code = "import transformers.modeling_utils, diffusers.models, peft_inits; print(peft_inits.__name__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
