"""SD runner: block-wise personalisation and style training, sampling, composition and LoRA export.

    python experiments/sd.py train --data subject --method loldu --blocks upper    # tiny embedded pipeline, CPU
    python experiments/sd.py compose --identity ID_DIR --style STYLE_DIR --prompts "a photo of sks cat"

All options: `python experiments/sd.py {train,sample,compose,export,pretrain} --help`. The machinery lives in
`peft_inits.diffusion`.
"""

from peft_inits.diffusion.quiet import silence_image_processor_fallback

silence_image_processor_fallback()  # before diffusers loads its pipelines

from peft_inits.diffusion.runner import main, parse_args  # noqa: E402

if __name__ == "__main__":
    main(parse_args())
