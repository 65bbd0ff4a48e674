"""`mixq-compile experiment ogbn_arxiv` as a script (the experiment: mixq_compile/experiments/ogbn_arxiv.py)."""

import sys

from mixq_compile.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "ogbn_arxiv", *sys.argv[1:]]))
