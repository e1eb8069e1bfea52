"""The `peft-inits` command: every runner of the suite behind one entry point (what `experiments/*.py` run from a
checkout), so an installed wheel can run them too.

    peft-inits compare                          # every method side by side on MiniLM + tweets (CPU minutes)
    peft-inits sd train --method loldu          # adapters of the shipped glyph model
    peft-inits <command> --help                 # each command's own flags

A command's module is imported only when it runs, so `--help` and one runner never load another's dependencies.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("peft_inits.cli.compare", "every method side by side on a text classifier, one table and plot"),
    "encoder": ("peft_inits.cli.encoder", "fine-tune a sequence classifier (MiniLM offline, or a local model)"),
    "vit": ("peft_inits.cli.vit", "fine-tune a ViT image classifier"),
    "sd": ("peft_inits.cli.sd", "Stable Diffusion / glyph-model adapters: train, sample, ablation, …"),
    "study": ("peft_inits.cli.study", "convergence benchmark: tuned rates, seeds, CIs and verdicts per task"),
    "descriptor-study": ("peft_inits.cli.descriptor_study", "cluster and retrieve adapters by their weights"),
    "collection": ("peft_inits.cli.collection", "index, cluster and map a folder of adapters"),
    "demo": ("peft_inits.cli.demo", "wrap MiniLM with each method: counts, identity and merge checks"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    return f"usage: peft-inits <command> [options]\n\ncommands:\n{rows}\n\n`peft-inits <command> --help`: its options."


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command with the rest of the arguments; bad input ends with its message (PEFT_INITS_TRACEBACK=1:
    the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"peft-inits: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if command == "sd":
        from ..diffusion.quiet import silence_image_processor_fallback

        silence_image_processor_fallback()  # before diffusers loads its pipelines
    from .args import run_script

    module = importlib.import_module(COMMANDS[command][0])
    sys.argv[0] = f"peft-inits {command}"  # argparse's `prog`: usage lines name the command users typed
    run_script(module.main, module.parse_args, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
