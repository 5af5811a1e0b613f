"""Mutation fuzzing of bundles: damaged model files and edited manifests, served as ``edgec serve`` serves them.

Run by hand: ``.venv/bin/python benchmarks/fuzz.py --cases 2000`` (a small run is part of the tests;
the machinery is ``tests/helpers/fuzz.py``). Prints one row per format: refused (typed) / ran /
untyped / crashed (goal: 0 untyped, 0 crashed), with examples of any untyped or crashed case.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.fuzz import fuzz  # noqa: E402


def _progress(fmt: str, done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{fmt}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)
    elif done == total or done % max(1, total // 10) == 0:
        print(f"{fmt}: {done}/{total}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="mutations per format")
    parser.add_argument("--formats", default="onnx,tflite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-isolate", action="store_true",
                        help="load in the serving process itself, without the probe (to see what it prevents)")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    results = fuzz(args.cases, args.formats.split(","), args.seed, isolate=not args.no_isolate,
                   progress=_progress)
    how = "loaded without the probe" if args.no_isolate else "served as edgec serve serves them"
    table = Table(title=f"Bundle fuzzing: {args.cases} mutations per format, {how} (goal: 0 untyped, 0 crashed)")
    for col in ("format", "refused (typed)", "ran", "untyped", "crashed", "time"):
        table.add_column(col, justify="left" if col == "format" else "right")
    for fmt, r in results.items():
        c = r["counts"]
        table.add_row(fmt, str(c["refused"]), str(c["ran"]), str(c["untyped"]), str(c["crashed"]), f"{r['seconds']:.0f} s")
    console.print(table)
    for fmt, r in results.items():
        for outcome in ("untyped", "crashed"):
            for example in r["examples"][outcome]:
                console.print(f"[red]{fmt} {outcome}[/]: {example}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
