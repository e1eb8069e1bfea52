"""Run PEFT's own custom-model test matrix with every registered method added as cases; print the counts.

    python tests/peft_matrix/run.py [--methods SVFit,LoLDU] [--peft-version 0.21.2] [-- extra pytest args]

Fetches the installed peft's sdist once (`pip download --no-binary :all: --no-deps peft==<version>`, cached under
`.cache/peft_matrix/`, git-ignored), copies its `tests/` into a package next to it, splices our rows (`cases.py`)
into `test_custom_models.py` right after PEFT's own `TEST_CASES` and `MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES`, and runs
`TestPeftCustomModel` and `TestMultipleActiveAdapters` on exactly our rows (`-k peft_inits`). Tests judged
inapplicable are listed with their reason in `plugin.INAPPLICABLE`. Exit status: pytest's (non-zero on a failure).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = ROOT / ".cache" / "peft_matrix"
PACKAGE = "peft_upstream_tests"
# (file, anchor line start, what to insert before it): our rows join PEFT's lists right after they are defined
SPLICES = (
    ("ALL_PEFT_CONFIG_CLASSES = ", "from cases import TEST_CASES as _PI_ROWS\nTEST_CASES += _PI_ROWS\n"),
    (
        "def _skip_tests_with_multiple_adapters_with_target_parameters",
        "from cases import MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES as _PI_MULTI\n"
        "MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES += _PI_MULTI\n\n\n",
    ),
)
CLASSES = ("TestPeftCustomModel", "TestMultipleActiveAdapters")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peft-version", default=version("peft"), help="sdist to test against (default: installed)")
    parser.add_argument("--methods", default="", help="comma-separated config names without 'Config' (default: all)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    return parser.parse_args(argv)


def fetch_tests(peft_version: str) -> Path:
    """The sdist's tests/ folder, downloaded and unpacked once per version."""
    target = CACHE / f"peft-{peft_version}" / "tests"
    if (target / "test_custom_models.py").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"peft-{peft_version}.tar.gz"
    if not archive.is_file():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--no-binary",
            ":all:",
            "--no-deps",
            f"peft=={peft_version}",
            "-d",
            str(CACHE),
        ]
        subprocess.run(cmd, check=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"peft-{peft_version}/tests/")]
        tar.extractall(CACHE, members=members, filter="data")
    return target


def build_package(tests: Path, peft_version: str) -> Path:
    """A fresh importable copy of PEFT's tests with our rows spliced in; returns the patched test file."""
    package = CACHE / f"run-{peft_version}" / PACKAGE
    shutil.rmtree(package, ignore_errors=True)
    shutil.copytree(tests, package)
    (package / "__init__.py").write_text("")
    (package / "conftest.py").write_text("import torch\n\ntorch.set_num_threads(1)\npytest_plugins = ['plugin']\n")
    path = package / "test_custom_models.py"
    text = path.read_text()
    for anchor, insert in SPLICES:
        at = text.find("\n" + anchor)
        if at < 0:
            raise SystemExit(f"{path}: anchor {anchor!r} not found; this peft's test file changed layout")
        text = text[: at + 1] + insert + text[at + 1 :]
    path.write_text(text)
    (package.parent / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    return path


def main(args: argparse.Namespace) -> int:
    test_file = build_package(fetch_tests(args.peft_version), args.peft_version)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(test_file.parents[1]), env.get("PYTHONPATH", "")])
    selection = "peft_inits"
    if args.methods:
        # "-LoRAConfig-" as it appears in the test ids, so LoRA does not also select MiLoRA
        selection += " and (" + " or ".join(f"-{m.strip()}Config-" for m in args.methods.split(",")) + ")"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(test_file.parents[1] / "pytest.ini"),
        "--rootdir",
        str(test_file.parents[1]),
        "-q",
        "--tb=short",
        "--disable-warnings",
        "-k",
        selection,
        *[f"{test_file}::{cls}" for cls in CLASSES],
        *args.pytest_args,
    ]
    print(f"peft {args.peft_version} sdist tests: {test_file}")
    return subprocess.run(cmd, env=env, cwd=test_file.parents[1]).returncode


if __name__ == "__main__":
    sys.exit(main(parse_args()))
