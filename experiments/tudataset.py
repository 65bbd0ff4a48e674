"""`mixq-compile experiment tudataset` as a script (the experiment: mixq_compile/experiments/tudataset.py)."""

import sys

from mixq_compile.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "tudataset", *sys.argv[1:]]))
