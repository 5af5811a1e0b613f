"""Structured vs unstructured pruning, with distillation, measured on the exported ONNX.

Run by hand (not part of the tests): ``.venv/bin/python benchmarks/compress.py``.
A CNN is trained on scikit-learn's real digits, then compressed three ways; each result is
exported to ONNX and timed with onnxruntime on this host against the unpruned export, in
alternating rounds, at batch 1 and batch 64. Accuracy is on the 450 held-out test digits.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgec.sdk.compress import compress
from edgec.sdk.report.markdown import human_bytes
from edgec.sdk.examples.zoo import digits_cnn, digits_splits, seeded, train

CASES = {
    "structured 50% + distillation": {"prune": 0.5, "structured": True, "distill": True},
    "structured 50%, no distillation": {"prune": 0.5, "structured": True, "distill": False},
    "unstructured 50% + distillation": {"prune": 0.5, "structured": False, "distill": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32, help="channels of the first conv (x2, x4 after)")
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs after pruning")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = digits_splits()
    base = train(seeded(digits_cnn, width=args.width), data.x_train, data.y_train, epochs=10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            result = compress(copy.deepcopy(base), data=(data.x_train, data.y_train),
                              eval_data=(data.x_test, data.y_test),
                              teachers=[copy.deepcopy(base)] if case["distill"] else (),
                              out=Path(tmp) / f"{len(rows)}.pt2", prune=case["prune"], structured=case["structured"],
                              epochs=args.epochs, threads=2)
            first, last = result.steps[0], result.steps[-1]
            if not rows:
                rows.append({"case": f"unpruned digits CNN (width {args.width})", **vars(first)})
            rows.append({"case": name, **vars(last)})
    table = Table(title="Compression of a digits CNN, measured on its ONNX export (onnxruntime, 2 threads, this host)")
    for col in ("case", "params", "MACs", "weights zero", "ONNX size", "speed-up b1", "speed-up b64", "accuracy", "drop"):
        table.add_column(col, justify="left" if col == "case" else "right")
    ref = rows[0]["accuracy"]
    for r in rows:
        table.add_row(r["case"], f"{r['params']:,}", f"{r['macs']:,}", f"{r['weight_sparsity']:.0%}",
                      human_bytes(r["onnx_bytes"]), f"{r['speedup_b1']:.2f}x", f"{r['speedup_b64']:.2f}x",
                      f"{100 * r['accuracy']:.2f}%", f"{100 * (ref - r['accuracy']):+.2f} pt")
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
