"""`peft-inits descriptor-study`: do adapter weights alone tell which "style" an adapter learned? (digits, tiny ViT;
the protocol: `peft_inits.studies.descriptor_study`).

    peft-inits descriptor-study                  # 6 styles × 4 seeds × 3 methods (minutes on a CPU)
    peft-inits descriptor-study --styles rotate,invert,noise --seeds 2 --steps 10   # tiny
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..studies.descriptor_study import DigitStudySettings, run_study
from .flags import add_settings_flags, settings_from_args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_flags(parser, DigitStudySettings)
    args = parser.parse_args(argv)
    try:
        settings_from_args(DigitStudySettings, args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    return run_study(settings_from_args(DigitStudySettings, args))
