"""Reports as terminal tables (rich): what the CLI prints after each long verb."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from .markdown import board_name, human_bytes


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else fmt.format(x)


def _task(task: dict[str, Any] | None) -> str:
    """``recall 0.973``: the task metric's short name and value."""
    if not task:
        return "—"
    short = {"top-1 agreement": "top-1", "detection recall": "recall", "pixel agreement": "pixels",
             "nearest-neighbour agreement": "neighbours"}.get(task["metric"], task["metric"])
    return f"{short} {task['value']:.3f}"


def conversion_table(report: dict[str, Any]) -> Table:
    """The original, the fp32 artifact and the shipped one: size, latency, fidelity, accuracy."""
    table = Table(title=f"{report['model']['source']} → {report['device']['name']} "
                        f"({report['target']['format']} {report['target']['precision']})")
    for col in ("model", "size", "latency p50", "cosine min", "worst channel", "task", "accuracy"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in report["results"]:
        fid = row.get("fidelity") or {}
        lat = row.get("latency") or {}
        table.add_row(
            row["name"] + (" ★" if row.get("shipped") else ""), human_bytes(row["size_bytes"]),
            _num(lat.get("p50_ms"), "{:.3f} ms"), _num(fid.get("cosine_min"), "{:.4f}"),
            _num(fid.get("channel_cosine_min"), "{:.4f}"), _task(fid.get("task")),
            _num(100 * row["accuracy"] if row.get("accuracy") is not None else None, "{:.1f}%"),
        )
    return table


def conversion_summary(report: dict[str, Any]) -> str:
    """One line: what shipped, against fp32, and the checks it passed."""
    s, board = report["summary"], report.get("board")
    speed = (f"{board['speedup_vs_fp32']:.2f}x fp32 speed on the board ({board_name(board)})" if board else
             f"{s['speedup_vs_fp32']:.2f}x fp32 speed (host-measured)")
    return (f"Shipped ★: {100 * s['size_vs_fp32']:.0f}% of fp32 size, {speed}; verification passed: "
            f"{'; '.join(report['verification']['checks'])}")


def candidates_table(search: dict[str, Any]) -> Table:
    """Every recipe the policy search tried or skipped, with its measurements and verdict."""
    on_board = bool(search.get("board"))
    table = Table(title=f"Candidates (budget: {search['budget']})"
                  + (", speed-ups as the board timed them" if on_board else ""))
    for col in ("candidate", "size", "speed-up", *(("board p50",) if on_board else ()), "cosine min",
                "worst channel", "task", "Δ top-1", "result"):
        table.add_column(col, justify="left" if col in ("candidate", "result") else "right")
    for c in search["candidates"]:
        fid = c.get("fidelity") or {}
        quiet = c["status"] in ("shipped", "within budget")
        table.add_row(
            c["label"] + (" ★" if c["status"] == "shipped" else ""),
            human_bytes(c["size_bytes"]) if c.get("size_bytes") else "—",
            _num(c.get("speedup_vs_fp32"), "{:.2f}x"),
            *((_num((c.get("board") or {}).get("p50_ms"), "{:.3f} ms"),) if on_board else ()),
            _num(fid.get("cosine_min"), "{:.4f}"),
            _num(fid.get("channel_cosine_min"), "{:.4f}"), _task(fid.get("task")),
            _num(-c["drop_points"] if c.get("drop_points") is not None else None, "{:+.2f} pt"),
            c["status"] + (f": {c['reason']}" if c["reason"] and not quiet else ""),
        )
    return table


def sensitivity_table(layers: list[Any], recipe_label: str, top: int) -> Table:
    """The ``top`` layers that add the most output error when quantized alone."""
    table = Table(title=f"Per-layer sensitivity ({recipe_label}), most harmful first")
    for col in ("#", "layer", "op", "weights", "error", "cosine min"):
        table.add_column(col, justify="left" if col in ("layer", "op") else "right")
    for i, s in enumerate(layers[:top], start=1):
        table.add_row(str(i), s.layer.display, s.layer.op, f"{s.layer.params:,}", f"{s.error:.2e}",
                      f"{s.cosine_min:.4f}")
    return table


def compression_table(steps: list[Any], title: str) -> Table:
    """Each compression step measured on its ONNX export."""
    table = Table(title=title)
    for col in ("step", "change", "params", "MACs", "ONNX size", "speed-up b1", "speed-up b64", "accuracy"):
        table.add_column(col, justify="left" if col == "change" else "right")
    for s in steps:
        table.add_row(str(s.step), s.label, f"{s.params:,}", f"{s.macs:,}", human_bytes(s.onnx_bytes),
                      f"{s.speedup_b1:.2f}x", f"{s.speedup_b64:.2f}x",
                      _num(100 * s.accuracy if s.accuracy is not None else None, "{:.2f}%"))
    return table


def bundles_table(rows: list[dict[str, Any]], title: str) -> Table:
    """Bundles measured through the runtime (``edgec.sdk.examples.quickstart.measure_bundle`` rows)."""
    table = Table(title=title)
    labelled = any("model" in r for r in rows)
    cols = (("model",) if labelled else ()) + ("device", "fmt", "prec", "accuracy", "Δ acc", "size", "vs fp32",
                                               "b1 p50", "b1 ×", "b64 p50", "b64 ×")
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "device", "fmt", "prec") else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            *((r.get("model", ""),) if labelled else ()), r["device"], r["format"], r["precision"],
            f"{100 * r['accuracy']:.2f}%", _num(r["accuracy_delta_points"], "{:+.2f}"), human_bytes(r["size_bytes"]),
            _num(100 * r["size_vs_fp32"] if r["size_vs_fp32"] is not None else None, "{:.0f}%"),
            f"{r['latency_p50_ms']:.3f}ms", _num(r["speedup_vs_fp32"], "{:.2f}x"),
            f"{r['batch64_p50_ms']:.2f}ms", _num(r["batch64_speedup_vs_fp32"], "{:.2f}x"),
        )
    return table
