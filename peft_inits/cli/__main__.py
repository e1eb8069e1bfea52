"""`python -m peft_inits.cli <command>`: the `peft-inits` command without the console script."""

import sys

from . import main

sys.exit(main())
