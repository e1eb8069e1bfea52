"""ViT runner: adapt a transformers or timm ViT with LoRA, SVFit, LoLDU, full fine-tuning or the head only.

    python experiments/vit.py --method loldu          # tiny ViT pretrained on digits 0-4, adapted to digits 5-9
    python experiments/vit.py --model ~/vit-base-patch16-224 --data ~/images --method svfit
    python experiments/vit.py --model timm:vit_base_patch16_224 --checkpoint ~/vit_b16.safetensors --data ~/images

All options: --help. The machinery lives in `peft_inits.training.vit` (flags: `peft_inits.cli.vit`).
"""

from peft_inits.cli.args import run_script
from peft_inits.cli.vit import main, parse_args

if __name__ == "__main__":
    run_script(main, parse_args)
