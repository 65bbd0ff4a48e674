"""Regenerate experiments/RESULTS.md from results/: ``python -m experiments.make_results_md``."""

from experiments.harness.results_md import write_results_md

if __name__ == "__main__":
    print(f"wrote {write_results_md()}")
