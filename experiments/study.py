"""The convergence benchmark: tasks × methods × learning-rate grid × seeds, with CIs and verdicts, resumable.

    python experiments/study.py --tasks text --seeds 5 --output-dir runs/study
    python experiments/study.py --ci --output-dir /tmp/study-ci      # the structure in seconds

All options: --help. The machinery lives in `peft_inits.studies`.
"""

from peft_inits.cli.args import run_script
from peft_inits.cli.study import main, parse_args

if __name__ == "__main__":
    run_script(main, parse_args)
