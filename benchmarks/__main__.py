"""``python -m benchmarks SUITE [--quick] [--out DIR]``: run a benchmark suite, write its report."""

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

# Suite name -> module with ``run(out_dir, work, quick) -> Path``.
SUITES = {
    "digits-cnn": "benchmarks.digits_cnn",
    "int4-algos": "benchmarks.int4_algos",
    "minilm-sts": "benchmarks.minilm_sts",
    "pruned-cnns": "benchmarks.pruned_cnns",
    "qat-digits": "benchmarks.qat_digits",
    "smollm2": "benchmarks.smollm2",
    "smollm2-qat-trials": "benchmarks.smollm2_qat_trials",
    "smollm2-run": "benchmarks.smollm2_run",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--quick", action="store_true", help="smoke mode: a few batches, few timing rounds")
    parser.add_argument("--out", default="reports/benchmarks", help="folder for <suite>.md/.json")
    parser.add_argument("--run-folder", help="smollm2-run: the run folder of smollm2-int4.yaml or smollm2-full.yaml")
    args = parser.parse_args(argv)
    extra = {"run_folder": Path(args.run_folder)} if args.run_folder else {}
    with tempfile.TemporaryDirectory(prefix="modelpress-bench-") as work:
        path = importlib.import_module(SUITES[args.suite]).run(Path(args.out), Path(work), quick=args.quick, **extra)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
