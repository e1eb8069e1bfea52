"""SD runner: block-wise personalisation and style training, sampling, composition, the Block-wise LoRA ablation,
LoRA export, and the glyph-world model (the default --model).

    python experiments/sd.py train --data glyph:subject=♣ --method loldu --blocks upper   # shipped glyph model, CPU
    python experiments/sd.py compose --identity ID_DIR --style STYLE_DIR
    python experiments/sd.py ablation                                # every method × 3 seeds: table, grid, JSON

All options: `python experiments/sd.py {train,sample,compose,ablation,export,pretrain,quality,score} --help`. The
machinery lives in `peft_inits.diffusion`.
"""

from peft_inits.diffusion.quiet import silence_image_processor_fallback

silence_image_processor_fallback()  # before diffusers loads its pipelines

from peft_inits.cli.sd import main, parse_args  # noqa: E402

if __name__ == "__main__":
    main(parse_args())
