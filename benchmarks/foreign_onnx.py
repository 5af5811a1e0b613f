"""An ONNX model as other exporters write them, converted with --precision auto: peak RSS and time per stage.

Run by hand: ``.venv/bin/python benchmarks/foreign_onnx.py [--size 736] [--samples 32] [--keras] [--device rpi4]``.
With ``--keras`` the same network is a Keras model (``.keras``, NHWC, dynamic height and width),
converted through TFLiteConverter (``--device rpi4``) or tf2onnx (``--device x86-64``).

The model is built with ``onnx.helper`` the way other frameworks' exporters write detectors:
opset 12, every weight a ``Constant`` node (no initializers), dynamic batch, height and width,
a conv backbone at full resolution. Its weights are seeded random (what is measured here is
memory and time, and the fidelity of the conversion against the model itself, not
accuracy); the calibration and held-out images are real photographs' worth of structure:
the digits from scikit-learn, upscaled to ``--size``, three channels. Prints one row per stage
of ``edgec convert`` (load, data, export with graph preparation, search, verify, total) with
the process's peak RSS at the end of each, plus the search's candidates.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.models import conv_model, digits_images, keras_model  # noqa: E402

from edgec.sdk.progress import Progress  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stages(Progress):
    """``edgec convert``'s progress that records each stage's seconds and the peak RSS at its end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []
        self.started = self.last = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        yield
        now = time.perf_counter()
        self.rows.append((name, now - self.last, peak_rss_mb()))
        self.last = now

    def print(self) -> None:
        print(f"{'step':<52} {'seconds':>8} {'peak RSS MB':>12}")
        for name, seconds, rss in self.rows:
            print(f"{name[:52]:<52} {seconds:>8.1f} {rss:>12.0f}")
        print(f"{'total':<52} {time.perf_counter() - self.started:>8.1f} {peak_rss_mb():>12.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=736, help="image height and width")
    parser.add_argument("--samples", type=int, default=32, help="calibration images (as many again are held out)")
    parser.add_argument("--device", default="x86-64")
    parser.add_argument("--keras", action="store_true", help="the same network as a .keras model (NHWC)")
    args = parser.parse_args()
    from edgec.sdk.pipeline import convert

    stages = Stages()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        layout = (0, 2, 3, 1) if args.keras else (0, 1, 2, 3)
        model = keras_model(work / "detector.keras") if args.keras else conv_model(work / "detector.onnx")
        np.savez(work / "calib.npz", image=digits_images(args.size, args.samples).transpose(layout))
        np.savez(work / "eval.npz", image=digits_images(args.size, args.samples, offset=1000).transpose(layout))
        stages.started = stages.last = time.perf_counter()
        result = convert(model, device=args.device, precision="auto", calib=work / "calib.npz",
                         eval_data=work / "eval.npz", min_cosine=0.99, out=work / "bundle", progress=stages)
    kind = "Keras CNN (.keras, NHWC)" if args.keras else "opset-12 CNN, Constant-node weights"
    print(f"{args.size}x{args.size} dynamic-shape {kind}, {args.samples} calibration images, {args.device}")
    stages.print()
    print(f"\nreport stages (s): {result.report['timings_s']}")
    print(f"graph: {result.report['model'].get('prepared', {}).get('summary')}")
    print(f"shipped: {result.manifest.precision}")
    for c in result.report["search"]["candidates"]:
        print(f"  {c['label']:<40} {c['status']:<14} {c['reason'][:90]}")


if __name__ == "__main__":
    sys.exit(main())
