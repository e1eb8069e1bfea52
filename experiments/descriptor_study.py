"""Adapter descriptors study: cluster and retrieve adapters trained on digits in six styles, from weights alone.

    python experiments/descriptor_study.py                    # full study, results in runs/descriptor-study/
    python experiments/descriptor_study.py --styles rotate,invert,noise --seeds 2 --steps 10   # tiny

The machinery lives in `peft_inits.studies.descriptor_study`.
"""

from peft_inits.cli.descriptor_study import main, parse_args

if __name__ == "__main__":
    main(parse_args())
