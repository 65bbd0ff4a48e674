"""Regenerate experiments/RESULTS.md from results/ (run from the repository root)."""

from mixq_compile.experiments.results_md import write_results_md

if __name__ == "__main__":
    print(f"wrote {write_results_md()}")
