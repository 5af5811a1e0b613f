"""Bundles made on the host, run on an arm64 board (scripts/arm64-check.sh runs both halves).

    python scripts/arm64_parity.py host  DIR   # on the x86 host (SDK): train, convert, record outputs
    python scripts/arm64_parity.py guest DIR   # on the board (runtime only): run them, compare, RSS

The host half trains the digits CNN, converts it with ``--precision int8`` for rpi4, rpi5 and
jetson-orin-nano (and fp32 for rpi4), and writes each bundle's outputs on the 450 test digits
as the host's runtime computes them. The guest half loads the same bundles with the edgec
runtime and prints one row per bundle: largest absolute output difference, argmax
agreement, and the process's RSS after ``import edgec.runtime`` and after loading it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

BUILDS = (("rpi4", "int8"), ("rpi4", "fp32"), ("rpi5", "int8"), ("jetson-orin-nano", "int8"))


def host(out: Path) -> None:
    from edgec.runtime import load
    from edgec.sdk.examples.zoo import digits_cnn, digits_splits, export_pt2, seeded, train
    from edgec.sdk.pipeline import convert

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = digits_splits()
    model = train(seeded(digits_cnn), data.x_train, data.y_train, epochs=6)
    export_pt2(model, data.x_train[:1], out / "model.pt2")
    np.savez(out / "calib.npz", input=data.x_train[:256])
    np.savez(out / "test.npz", x=data.x_test, labels=data.y_test)
    rows = []
    for device, precision in BUILDS:
        bundle = out / f"{device}-{precision}"
        convert(out / "model.pt2", device=device, precision=precision, calib=out / "calib.npz", out=bundle)
        loaded = load(bundle)
        logits = next(iter(loaded.predict({loaded.inputs[0].name: data.x_test}).values()))
        np.save(bundle.with_suffix(".host.npy"), logits)
        rows.append({"bundle": bundle.name, "format": loaded.manifest.format})
    (out / "bundles.json").write_text(json.dumps(rows))
    print(f"host: {len(rows)} bundles in {out}")


def one(bundle: Path) -> None:
    """In a fresh process: RSS before and after loading, outputs compared with the host's."""
    from edgec.runtime import load
    from edgec.runtime.system import rss_bytes

    before = rss_bytes() / 2**20
    with np.load(bundle.parent / "test.npz") as npz:
        x, labels = npz["x"], npz["labels"]
    model = load(bundle)
    logits = next(iter(model.predict({model.inputs[0].name: x}).values()))
    host_logits = np.load(bundle.with_suffix(".host.npy"))
    print(json.dumps({"bundle": bundle.name, "format": model.manifest.format, "precision": model.manifest.precision,
                      "max_abs_diff": float(np.abs(logits.astype(np.float64) - host_logits).max()),
                      "argmax_agree": int((logits.argmax(1) == host_logits.argmax(1)).sum()), "n": len(x),
                      "accuracy": float((logits.argmax(1) == labels).mean()),
                      "rss_import_mb": round(before, 1), "rss_loaded_mb": round(rss_bytes() / 2**20, 1)}))


def guest(folder: Path) -> int:
    import platform

    rows = []
    for entry in json.loads((folder / "bundles.json").read_text()):
        done = subprocess.run([sys.executable, __file__, "one", str(folder / entry["bundle"])],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{entry['bundle']}: failed ({done.returncode}): {done.stderr.strip()[-500:]}")
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{platform.machine()}  {'bundle':<24} {'max |diff|':>10} {'argmax':>9} {'accuracy':>8} "
          f"{'RSS import':>10} {'RSS loaded':>10}")
    for r in rows:
        print(f"{'':<{len(platform.machine())}}  {r['bundle']:<24} {r['max_abs_diff']:>10.2e} "
              f"{r['argmax_agree']:>5}/{r['n']:<3} {r['accuracy']:>8.2%} {r['rss_import_mb']:>8.1f}MB "
              f"{r['rss_loaded_mb']:>8.1f}MB")
    return 0 if all(r["argmax_agree"] >= 0.99 * r["n"] for r in rows) else 1


if __name__ == "__main__":
    mode, where = sys.argv[1], Path(sys.argv[2])
    if mode == "host":
        host(where)
    elif mode == "one":
        one(where)
    else:
        sys.exit(guest(where))
