"""`mixq-compile experiment explore_all` as a script (the experiment: mixq_compile/experiments/explore_all.py)."""

import sys

from mixq_compile.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "explore_all", *sys.argv[1:]]))
