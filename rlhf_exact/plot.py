"""`python -m rlhf_exact.plot RUN_DIR [--out DIR]`: a run's metrics.jsonl as PNGs and one
self-contained HTML page (rlhf_exact/runtime/report.py)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_exact.plot", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="run directory holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/plots)")
    args = parser.parse_args(argv)
    from rlhf_exact.runtime.report import render

    try:
        report = render(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
