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
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def conv_model(path: Path, *, channels: tuple[int, ...] = (16, 32, 32), in_channels: int = 3, classes: int = 10,
               opset: int = 12, seed: int = 0, downsample: tuple[int, ...] | None = None) -> Path:
    """A dynamic-shape CNN (N, C, H, W) -> (N, classes) with every weight a Constant node; the layers in
    ``downsample`` have stride 2 (default: every layer but the first)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, previous, width = [], "image", in_channels

    def const(name: str, value: np.ndarray) -> str:
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32), name)))
        return name

    for i, out_ch in enumerate(channels):
        w = const(f"w{i}", rng.normal(0, np.sqrt(2 / (width * 9)), (out_ch, width, 3, 3)))
        b = const(f"b{i}", rng.normal(0, 0.05, out_ch))
        nodes.append(helper.make_node("Conv", [previous, w, b], [f"conv{i}"], pads=[1, 1, 1, 1],
                                      strides=[2, 2] if (i in downsample if downsample is not None else i) else [1, 1],
                                      name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        previous, width = f"relu{i}", out_ch
    nodes.append(helper.make_node("GlobalAveragePool", [previous], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"))
    fc = const("fc_w", rng.normal(0, np.sqrt(1 / width), (width, classes)))
    fc_b = const("fc_b", rng.normal(0, 0.05, classes))
    nodes.append(helper.make_node("MatMul", ["flat", fc], ["logits_mm"], name="fc"))
    nodes.append(helper.make_node("Add", ["logits_mm", fc_b], ["logits"], name="fc_bias"))
    graph = helper.make_graph(
        nodes, "foreign_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", in_channels, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="another-exporter")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def keras_model(path: Path, *, channels: tuple[int, ...] = (16, 32, 32), classes: int = 10, seed: int = 0) -> Path:
    """The same CNN as :func:`conv_model` in Keras: (N, H, W, 3) -> (N, classes), H and W dynamic."""
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input((None, None, 3), name="image")
    h = image
    for i, out_ch in enumerate(channels):
        h = keras.layers.Conv2D(out_ch, 3, strides=2 if i else 1, padding="same", activation="relu")(h)
    logits = keras.layers.Dense(classes, name="logits")(keras.layers.GlobalAveragePooling2D()(h))
    keras.Model(image, logits).save(path)
    return path


def digits_images(size: int, count: int, *, seed: int = 0, offset: int = 0) -> np.ndarray:
    """``count`` real digits upscaled to ``size`` x ``size``, three channels, in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[offset:offset + count].astype(np.float32) / 16.0
    repeat = max(1, size // 8)
    big = np.kron(digits, np.ones((repeat, repeat), dtype=np.float32))[:, :size, :size]
    return np.repeat(big[:, None], 3, axis=1).astype(np.float32)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stages:
    """``edgec convert``'s progress hook that records each step's seconds and the peak RSS at its end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []
        self.started = self.last = time.perf_counter()

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            yield
            now = time.perf_counter()
            self.rows.append((name, now - self.last, peak_rss_mb()))
            self.last = now
        return timed()

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
                         eval_data=work / "eval.npz", min_cosine=0.99, out=work / "bundle", step=stages)
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
