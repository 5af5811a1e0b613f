"""A Keras CNN trained on real digits, converted for four boards: what each bundle costs and keeps.

Run by hand (not part of the tests): ``.venv/bin/python benchmarks/keras_digits.py``.
The model is trained with Keras on scikit-learn's digits and saved as ``.keras``; each board
gets an fp32 bundle (where it runs fp32) and one from ``--precision auto`` under the default
budget (at most 1 point of top-1), through TFLiteConverter (rpi4, rpi5, coral) or tf2onnx
(x86-64). Every bundle is measured through the edgec runtime on the held-out test digits:
accuracy, file size, batch-1 and batch-64 latency (p50) on this host; the conversion's wall
time and the recipe shipped are listed below the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgec import convert  # noqa: E402
from edgec.sdk.examples.quickstart import compare_rows, measure_bundle  # noqa: E402
from edgec.sdk.examples.zoo import digits_splits  # noqa: E402
from edgec.sdk.report.terminal import bundles_table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.models import train_keras  # noqa: E402

BOARDS = (("rpi4", ("fp32", "auto")), ("rpi5", ("fp32", "auto")), ("coral", ("auto",)), ("x86-64", ("fp32", "auto")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    data = digits_splits()
    nhwc = {k: np.ascontiguousarray(getattr(data, k).transpose(0, 2, 3, 1)) for k in ("x_train", "x_calib", "x_test")}
    model = train_keras(nhwc["x_train"], data.y_train, epochs=args.epochs)
    keras_accuracy = float((model.predict(nhwc["x_test"], verbose=0).argmax(1) == data.y_test).mean())
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model.save(work / "digits.keras")
        np.savez(work / "calib.npz", image=nhwc["x_calib"], labels=data.y_calib)
        for device, precisions in BOARDS:
            group = []
            for precision in precisions:
                out = work / f"{device}-{precision}"
                started = time.perf_counter()
                result = convert(work / "digits.keras", device=device, precision=precision, calib=work / "calib.npz",
                                 out=out)
                seconds = time.perf_counter() - started
                row = measure_bundle(out, nhwc["x_test"], data.y_test, budget_s=2.0)
                row["model"] = f"keras {precision}"
                group.append(row)
                recipe = result.report["target"].get("recipe") or {}
                notes.append(f"{device:<8} {precision:<5} -> {result.manifest.format} {result.manifest.precision:<5} "
                             f"{recipe.get('tool', '-'):<24} {recipe.get('recipe', '-'):<22} {seconds:5.1f} s")
            rows += compare_rows(group)
    console = Console(width=150)
    console.print(f"Keras CNN: {100 * keras_accuracy:.2f}% on {len(data.y_test)} held-out test digits (Keras itself)")
    console.print(bundles_table(rows, "Keras .keras -> bundles, measured through the edgec runtime (p50 per call, "
                                      "this host)"))
    console.print("board    asked    shipped      tool                     recipe                 convert")
    for line in notes:
        console.print(line)


if __name__ == "__main__":
    main()
