"""Measure fp32 vs int8 bundles for several models trained on real digits, both formats.

Run by hand (not part of the tests): ``.venv/bin/python benchmarks/convert.py``.
Each model is trained on scikit-learn's digits, exported to .pt2, converted for rpi4
(TFLite) and x86-64 (ONNX) at fp32 and int8, and every bundle is measured through the
edgec runtime on the held-out test digits: accuracy, file size, batch-1 latency (p50).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from edgec import convert
from edgec.sdk.examples.quickstart import compare_rows, measure_bundle
from edgec.sdk.report.terminal import bundles_table
from edgec.sdk.examples.zoo import digits_cnn, digits_dwcnn, digits_mlp, digits_splits, export_pt2, seeded, train

MODELS = {"digits-cnn": digits_cnn, "digits-dwcnn": digits_dwcnn, "digits-mlp": digits_mlp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    data = digits_splits()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.savez(work / "calib.npz", x=data.x_calib)
        for name, build in MODELS.items():
            model = train(seeded(build), data.x_train, data.y_train, epochs=args.epochs)
            export_pt2(model, data.x_train, work / f"{name}.pt2")
            group = []
            for device in ("rpi4", "x86-64"):
                for precision in ("fp32", "int8"):
                    out = work / f"{name}-{device}-{precision}"
                    convert(work / f"{name}.pt2", device=device, precision=precision, calib=work / "calib.npz", out=out)
                    group.append({"model": name, **measure_bundle(out, data.x_test, data.y_test, budget_s=2.0)})
            rows += compare_rows(group)
    console = Console(width=140)
    console.print(bundles_table(rows, f"fp32 vs int8 on {len(data.x_test)} held-out test digits (p50 per call at batch 1 / 64, this host)"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
