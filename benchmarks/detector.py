"""A YOLO-style detector through ``edgec convert --precision auto``: candidates, per-output fidelity,
detection recall and speed-up, against int8 with one scale for the whole head (what used to ship).

Run by hand: ``.venv/bin/python benchmarks/detector.py [--devices x86-64,rpi4,jetson-orin-nano]``.

The detector (``edgec.sdk.examples.shapes``) is trained here on 800 rendered 128x128 images of
discs, squares and triangles with exact boxes; its one output ``[N, 7, 320]`` is laid out like
YOLOv8's export (xywh in pixels, then class scores). Calibration: 256 other images; held out:
64 more. Recall is of the original model's detections (score 0.25, NMS IoU 0.45, matched at
IoU 0.5 with the same class). Speed-ups are measured on this host; for boards that do not run
like it (rpi4, Jetson) they are reported, not used to choose.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="x86-64,rpi4,jetson-orin-nano")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    import edgec
    from edgec.converters import converter_for
    from edgec.converters.base import Recipe
    from edgec.devices import get_profile
    from edgec.sdk.examples.shapes import render, train_detector
    from edgec.sdk.examples.zoo import export_pt2
    from edgec.sdk.load.data import load_samples
    from edgec.sdk.load.models import load_model
    from edgec.sdk.quantize.budget import Budget
    from edgec.sdk.verify.artifact import open_artifact, outputs_of, reference_outputs
    from edgec.sdk.verify.fidelity import run_batched
    from edgec.runtime.timing import paired_speedup

    with tempfile.TemporaryDirectory(prefix="edgec-detector-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        model = train_detector(render(800, seed=1), epochs=args.epochs)
        export_pt2(model, render(2, seed=9).images, root / "det.pt2")
        np.savez(root / "calib.npz", image=render(256, seed=3).images)
        np.savez(root / "eval.npz", image=render(64, seed=4).images)
        print(f"trained the detector in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        source = load_model(root / "det.pt2")
        calib, _ = load_samples(root / "calib.npz", source.inputs)
        held, _ = load_samples(root / "eval.npz", source.inputs)
        reference = reference_outputs(source, held)
        one = next(held.samples())
        rows = []
        for device in args.devices.split(","):
            profile = get_profile(device)
            fmt = profile.format
            converter = converter_for(fmt, source.kind)
            fp32 = root / f"{device}.fp32{'.onnx' if fmt == 'onnx' else '.tflite'}"
            converter.export(source, fp32)
            base = open_artifact(fp32, fmt=fmt, precision="fp32", source=source, profile=profile, threads=1)
            one_scale = root / f"{device}.one-scale{fp32.suffix}"
            done = converter.quantize(fp32, one_scale, recipe=Recipe("int8", "static", split_ranges=False),
                                      source=source, calib=calib, profile=profile)
            m = open_artifact(one_scale, fmt=fmt, precision="int8", source=source, profile=profile, threads=1,
                              weight_bits=done.get("weight_bits"))
            fid = reference.compare(run_batched(outputs_of(m), held.batches(16)))
            speed, _, _ = paired_speedup(lambda: base.predict(one), lambda: m.predict(one), threads=1, budget_s=1.0)
            ok, _ = Budget(min_cosine=0.99).check(fid, None)
            rows.append((device, "int8, one scale for the head (before)", fid, speed,
                         "passes" if ok else "caught by verification"))
            result = edgec.convert(root / "det.pt2", device=device, calib=root / "calib.npz",
                                   eval_data=root / "eval.npz", out=root / f"bundle-{device}")
            report = result.report
            shipped = report["results"][-1]["fidelity"]
            label = report["search"]["shipped"] if report.get("search") else report["target"]["precision"]
            rows.append((device, f"auto: {fmt} {label} (after)", shipped, report["summary"]["speedup_vs_fp32"],
                         "shipped"))
            print(f"\n{device}: candidates", file=sys.stderr)
            for c in report["search"]["candidates"]:
                task = (c.get("fidelity") or {}).get("task") or {}
                print(f"  {c['label']:<38} {c['status']:<14} recall {task.get('value', float('nan')):.3f}",
                      file=sys.stderr)
        print("\n| board | artifact | cosine min (whole output) | worst channel cosine | detection recall | "
              "score error | speed-up vs fp32 (this host) | verdict |")
        print("|---|---|---|---|---|---|---|---|")
        for device, name, fid, speed, verdict in rows:
            fid = fid if isinstance(fid, dict) else fid.to_dict()
            task = fid["task"]
            print(f"| {device} | {name} | {fid['cosine_min']:.4f} | {fid['channel_cosine_min']:.4f} | "
                  f"{task['value']:.3f} | {task['details']['score_error']:.3f} | {speed:.2f}x | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
