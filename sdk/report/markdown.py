"""Render a conversion report (the dict in ``report.json``) as Markdown for people."""

from __future__ import annotations

from typing import Any


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = "{:.4f}") -> str:
    return "—" if x is None else fmt.format(x)


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: what was shipped, what it cost, how it was checked."""
    target = report["target"]
    device = report["device"]
    lines = [
        f"# edgec report: {report['model']['source']} → {device['name']} "
        f"({target['format']} {target['precision']})",
        "",
        f"{device['description']}. Precision {target['precision']}: {target['precision_reason']}.",
        "",
        *([f"Graph prepared for quantization: {report['model']['prepared']['summary']}.", ""]
          if report["model"].get("prepared") else []),
        "| model | size | latency p50 (batch 1) | speed-up | cosine (min) | top-1 agreement | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    base = report["results"][0]["latency"]["p50_ms"] if report["results"][0].get("latency") else None
    for row in report["results"]:
        lat = row.get("latency") or {}
        p50 = lat.get("p50_ms")
        speed = f"{base / p50:.2f}x" if base and p50 else "—"
        fid = row.get("fidelity") or {}
        name = f"**{row['name']} (shipped)**" if row.get("shipped") else row["name"]
        lines.append(
            f"| {name} | {human_bytes(row.get('size_bytes'))} | {_num(p50, '{:.3f} ms')} | {speed} | "
            f"{_num(fid.get('cosine_min'))} | {_pct(fid.get('top1_agreement'))} | {_pct(row.get('accuracy'))} |"
        )
    summary = report["summary"]
    lines += ["", "## Summary", ""]
    lines.append(f"- Size: {_pct(summary['size_vs_fp32'])} of the fp32 {target['format']} artifact "
                 f"({human_bytes(summary['size_bytes'])}).")
    if summary.get("speedup_vs_fp32"):
        lines.append(f"- Speed: {summary['speedup_vs_fp32']:.2f}x the fp32 {target['format']} artifact, "
                     f"{summary['speedup_vs_original']:.2f}x the original, on this host.")
    if summary.get("accuracy_drop_points") is not None:
        lines.append(f"- Accuracy: {summary['accuracy_drop_points']:+.2f} points vs the original "
                     f"on {report['data']['holdout_samples']} held-out labelled samples.")
    if report.get("search"):
        lines += search_markdown(report["search"])
    stages = {k: v for k, v in report.get("timings_s", {}).items() if k != "total"}
    if stages:
        lines += ["", "## Where the time went", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in stages.items()]
        lines.append(f"| **total** | **{report['timings_s'].get('total', sum(stages.values())):.1f}** |")
    verification = report["verification"]
    lines += ["", "## Verification", ""]
    lines.append(f"- {'Passed' if verification['passed'] else 'FAILED'}: " + "; ".join(verification["checks"]) + ".")
    lines.append(f"- Compared on {report['data']['holdout_samples']} held-out samples"
                 + (" (synthetic inputs: no --calib was given, so this checks the conversion, not accuracy)."
                    if report["data"]["synthetic"] else " that were not used for calibration."))
    fit = report["fit"]
    lines += ["", f"## Fit on {device['name']}", ""]
    lines.append(f"- Storage: {human_bytes(fit['size_bytes'])} of a {fit['storage_mb']} MB budget.")
    if fit.get("ram_delta_bytes") is not None:
        lines.append(f"- RAM added by loading (measured on this host): {human_bytes(fit['ram_delta_bytes'])} "
                     f"of a {fit['model_ram_mb']} MB model budget.")
    for problem in fit["problems"]:
        lines.append(f"- **Does not fit:** {problem}")
    data = report["data"]
    lines += ["", "## Data", ""]
    lines.append(f"- Source: {data['source']}; {data['calibration_samples']} samples for calibration, "
                 f"{data['holdout_samples']} held out for verification.")
    for warning in data["warnings"]:
        lines.append(f"- Warning: {warning}")
    if target.get("recipe"):
        lines += ["", "## Recipe", ""]
        lines += [f"- {k}: {v}" for k, v in target["recipe"].items()]
    if report.get("notes"):
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in report["notes"]]
    host = report["host"]
    lines += ["", "## Host and versions", ""]
    lines.append(f"- Latency measured on this host ({host['machine']}, {host['threads']} threads), "
                 f"not on the {device['name']}: use it to compare rows, not as the board's latency.")
    lines.append("- " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    return "\n".join(lines) + "\n"


def search_markdown(search: dict[str, Any]) -> list[str]:
    """The candidates table and the sensitivity ranking of a ``--precision auto`` search."""
    lines = ["", "## Candidates tried", "",
             f"Budget: {search['budget']}. Speed-ups are against fp32, timed in alternating rounds on this host.", "",
             "| candidate | float layers | size | vs fp32 | speed-up | cosine min | cosine mean | top-1 drop | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in search["candidates"]:
        fid = c.get("fidelity") or {}
        floats = ", ".join(c["float_layers"]) if c["float_layers"] else "—"
        name = f"**{c['label']}**" if c["status"] == "shipped" else c["label"]
        result = c["status"] + (f": {c['reason']}" if c.get("reason") else "")
        lines.append(
            f"| {name} | {floats} | {human_bytes(c.get('size_bytes'))} | {_pct(c.get('size_vs_fp32'))} | "
            f"{_num(c.get('speedup_vs_fp32'), '{:.2f}x')} | {_num(fid.get('cosine_min'))} | "
            f"{_num(fid.get('cosine_mean'))} | {_num(c.get('drop_points'), '{:.2f} pt')} | {result} |"
        )
    sens = search.get("sensitivity") or {}
    if sens.get("layers"):
        lines += sensitivity_markdown(sens["layers"], sens["recipe"])
    return lines


def sensitivity_markdown(layers: list[dict[str, Any]], recipe: str | None, top: int = 15) -> list[str]:
    """The most sensitive layers: output error when each alone is quantized."""
    lines = ["", "## Per-layer sensitivity", "",
             f"Each layer quantized alone ({recipe}); error = 1 − mean cosine to the original's outputs.", "",
             "| # | layer | op | weights | error | cosine min |", "|---|---|---|---|---|---|"]
    for i, layer in enumerate(layers[:top], start=1):
        lines.append(f"| {i} | {layer['display']} | {layer['op']} | {layer['params']:,} | "
                     f"{layer['error']:.2e} | {layer['cosine_min']:.4f} |")
    if len(layers) > top:
        lines.append(f"| | … {len(layers) - top} more in report.json | | | | |")
    return lines
