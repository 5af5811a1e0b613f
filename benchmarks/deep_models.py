"""Models that made the precision search run long, converted with the defaults: time and peak RSS per step.

Run by hand: ``.venv/bin/python benchmarks/deep_models.py [--model deep|stateful|both] [--device x86-64]``.

- ``deep``: a third-party-style CNN of ``--layers`` (100) convolutions, written with
  ``onnx.helper`` as other exporters write them (opset 12, every weight a ``Constant`` node,
  dynamic batch, height and width), seeded random weights; real digits upscaled to 64x64,
  three channels, as calibration (64) and held-out (64) images. What is measured is time and
  memory, and fidelity against the model itself, not accuracy.
- ``stateful``: a streaming two-layer GRU (chunk ``[1, 4, 8]``, state ``[2, 1, 16]``, a 0-d gain),
  exported with ``torch.export`` (seeded weights); each sample a digit's second half with the
  state the model reached on its first half (200 of them, in the ``[N, ...]`` whole-input layout).

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
from foreign_onnx import Stages, conv_model, digits_images  # noqa: E402


def stateful_model(work: Path, samples: int = 200) -> tuple[Path, Path]:
    import torch
    from sklearn.datasets import load_digits

    class Stateful(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = torch.nn.GRU(8, 16, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(16, 4)

        def forward(self, x, state, gain):
            y, h = self.gru(x * gain, state)
            return self.head(y), h

    torch.manual_seed(0)
    model = Stateful().eval()
    rows = (load_digits().data / 16).astype(np.float32).reshape(-1, 8, 8)
    x, state, gain = [], [], []
    with torch.no_grad():
        for i in range(samples):
            g = np.float32(0.5 + (i % 5) * 0.25)
            _, h = model(torch.from_numpy(rows[i, None, :4]), torch.zeros(2, 1, 16), torch.tensor(g))
            x.append(rows[i, None, 4:])
            state.append(h.numpy())
            gain.append(g)
    np.savez(work / "calib.npz", x=np.stack(x), state=np.stack(state), gain=np.array(gain))
    program = torch.export.export(model, (torch.from_numpy(x[0]), torch.from_numpy(state[0]), torch.tensor(gain[0])))
    torch.export.save(program, work / "stateful.pt2")
    return work / "stateful.pt2", work / "calib.npz"


def run(name: str, model: Path, calib: Path, eval_data: Path | None, device: str) -> None:
    from edgec.sdk.pipeline import convert

    stages = Stages()
    result = convert(model, device=device, calib=calib, eval_data=eval_data, out=model.parent / f"{name}-bundle",
                     step=stages)
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
            model, calib = stateful_model(work / "s")
            run("stateful GRU (state [2, 1, 16], 0-d gain)", model, calib, None, args.device)


if __name__ == "__main__":
    sys.exit(main())
