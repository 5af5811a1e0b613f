"""Models that made the precision search run long, converted with the defaults: time and peak RSS per step.

Run by hand: ``.venv/bin/python benchmarks/deep_models.py [--model deep|stateful|both] [--device x86-64]``.

- ``deep``: a third-party-style CNN of ``--layers`` (100) convolutions, written with
  ``onnx.helper`` as other exporters write them (opset 12, every weight a ``Constant`` node,
  dynamic batch, height and width), seeded random weights; real digits upscaled to 64x64,
  three channels, as calibration (64) and held-out (64) images. What is measured is time and
  memory, and fidelity against the model itself, not accuracy.
- ``stateful``: the streaming GRU of :mod:`edgec.sdk.examples.stateful` (chunk ``[1, 4, 8]``, state
  ``[2, 1, 16]``, a 0-d gain), 200 samples made from real digits in the ``[N, ...]`` layout.

Each prints the steps of ``edgec convert --precision auto`` with seconds and the process's peak
RSS at the end of each, then the search's candidates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foreign_onnx import Stages  # noqa: E402  (this folder)
from helpers.models import conv_model, digits_images  # noqa: E402

from edgec.sdk.examples.stateful import write_stateful  # noqa: E402


def run(name: str, model: Path, calib: Path, eval_data: Path | None, device: str) -> None:
    from edgec.sdk.pipeline import convert

    stages = Stages()
    result = convert(model, device=device, calib=calib, eval_data=eval_data, out=model.parent / f"{name}-bundle",
                     progress=stages)
    print(f"\n{name}: {device}, shipped {result.manifest.format} {result.manifest.precision}")
    stages.print()
    search = result.report["search"]
    if search.get("cut_short"):
        print(f"cut short: {search['cut_short']}")
    for c in search["candidates"]:
        print(f"  {c['label'][:48]:<48} {c['status']:<14} {c.get('seconds') or 0:>6.1f}s {c['reason'][:70]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("deep", "stateful", "both"), default="both")
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="x86-64")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model in ("deep", "both"):
            channels = tuple(16 if i < args.layers // 2 else 32 for i in range(args.layers))
            model = conv_model(work / "deep.onnx", channels=channels, downsample=(args.layers // 3, 2 * args.layers // 3))
            np.savez(work / "calib.npz", image=digits_images(args.size, 64))
            np.savez(work / "eval.npz", image=digits_images(args.size, 64, offset=1000))
            started = time.perf_counter()
            run(f"deep CNN ({args.layers} convolutions, opset 12, Constant weights, {args.size}x{args.size})", model,
                work / "calib.npz", work / "eval.npz", args.device)
            print(f"wall: {time.perf_counter() - started:.0f} s")
        if args.model in ("stateful", "both"):
            (work / "s").mkdir()
            model, calib = write_stateful(work / "s")
            run("stateful GRU (state [2, 1, 16], 0-d gain)", model, calib, None, args.device)


if __name__ == "__main__":
    sys.exit(main())
