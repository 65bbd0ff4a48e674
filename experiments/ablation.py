"""`mixq-compile experiment ablation` as a script (the experiment: mixq_compile/experiments/ablation.py)."""

import sys

from mixq_compile.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "ablation", *sys.argv[1:]]))
