"""`mixq-compile experiment csl` as a script (the experiment: mixq_compile/experiments/csl.py)."""

import sys

from mixq_compile.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "csl", *sys.argv[1:]]))
