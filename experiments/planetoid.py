"""`mixq-compile experiment planetoid` as a script (the experiment: mixq_compile/experiments/planetoid.py)."""

import sys

from mixq_compile.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "planetoid", *sys.argv[1:]]))
