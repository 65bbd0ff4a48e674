"""`mixq-compile experiment planetoid_dq` as a script (the experiment: mixq_compile/experiments/planetoid_dq.py)."""

import sys

from mixq_compile.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "planetoid_dq", *sys.argv[1:]]))
