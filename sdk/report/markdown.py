"""A conversion report's page for people, section by section, from the dict in ``report.json``."""

from __future__ import annotations

from typing import Any

from .page import Report, Section


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


def convert_page(report: dict[str, Any]) -> Report:
    """A conversion's report (the dict in ``report.json``) with its page: what shipped, what it cost,
    how it was checked."""
    target = report["target"]
    device = report["device"]
    shipped = next((r for r in report["results"] if r.get("shipped")), {})
    page = Report(f"edgec report: {report['model']['source']} → {device['name']} "
                  f"({target['format']} {target['precision']})", report, lead=_lead(report))
    page.add("Summary", _summary(report, shipped))
    page.extend([output_section(shipped.get("fidelity") or {})])
    if report.get("board"):
        page.add("Measured on the board", board_lines(report["board"], report.get("search")))
    if report.get("search"):
        page.extend(search_sections(report["search"]))
    stages = {k: v for k, v in report.get("timings_s", {}).items() if k != "total"}
    if stages:
        total = report["timings_s"].get("total", sum(stages.values()))
        page.add("Where the time went", ["| stage | seconds |", "|---|---|",
                                         *(f"| {k} | {v:.1f} |" for k, v in stages.items()),
                                         f"| **total** | **{total:.1f}** |"])
    page.add("Verification", _verification(report))
    page.add(f"Fit on {device['name']}", _fit(report["fit"]))
    page.add("Data", _data(report["data"]))
    page.add("Recipe", [f"- {k}: {v}" for k, v in (target.get("recipe") or {}).items()])
    page.add("Notes", [f"- {note}" for note in report.get("notes") or ()])
    host = report["host"]
    where = ("the board's own numbers are under \"Measured on the board\"" if report.get("board") else
             "use it to compare rows, not as the board's latency")
    page.add("Host and versions", [
        f"- Latency in the first table measured on this host ({host['machine']}, {host['threads']} threads), "
        f"not on the {device['name']}: {where}.",
        "- " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())])
    return page


def _lead(report: dict[str, Any]) -> tuple[str, ...]:
    target = report["target"]
    lines = [f"{report['device']['description']}. "
             f"Format {target['format']}: {target.get('format_reason', 'asked for')}. "
             f"Precision {target['precision']}: {target['precision_reason']}.", ""]
    if report["model"].get("prepared"):
        lines += [f"Graph prepared for quantization: {report['model']['prepared']['summary']}.", ""]
    lines += ["| model | size | latency p50 (batch 1) | speed-up | cosine (min) | top-1 agreement | accuracy |",
              "|---|---|---|---|---|---|---|"]
    base = report["results"][0]["latency"]["p50_ms"] if report["results"][0].get("latency") else None
    for row in report["results"]:
        p50 = (row.get("latency") or {}).get("p50_ms")
        speed = f"{base / p50:.2f}x" if base and p50 else "—"
        fid = row.get("fidelity") or {}
        name = f"**{row['name']} (shipped)**" if row.get("shipped") else row["name"]
        lines.append(
            f"| {name} | {human_bytes(row.get('size_bytes'))} | {_num(p50, '{:.3f} ms')} | {speed} | "
            f"{_num(fid.get('cosine_min'))} | {_pct(fid.get('top1_agreement'))} | {_pct(row.get('accuracy'))} |"
        )
    return tuple(lines)


def _summary(report: dict[str, Any], shipped: dict[str, Any]) -> list[str]:
    summary, fmt = report["summary"], report["target"]["format"]
    lines = [f"- Size: {_pct(summary['size_vs_fp32'])} of the fp32 {fmt} artifact "
             f"({human_bytes(summary['size_bytes'])})."]
    if summary.get("speedup_vs_fp32"):
        lines.append(f"- Speed: {summary['speedup_vs_fp32']:.2f}x the fp32 {fmt} artifact, "
                     f"{summary['speedup_vs_original']:.2f}x the original, on this host.")
    board = report.get("board")
    if board:
        lines.append(f"- On the board ({board_name(board)}): {board['speedup_vs_fp32']:.2f}x the fp32 {fmt} "
                     f"artifact, {board['shipped']['p50_ms']:.3f} ms p50 at batch 1"
                     + (f", {human_bytes(board['shipped']['added_rss_bytes'])} of memory added"
                        if board["shipped"].get("added_rss_bytes") is not None else "") + ".")
    change = summary.get("accuracy_change_points")
    if change is None and summary.get("accuracy_drop_points") is not None:
        change = -summary["accuracy_drop_points"]
    if change is not None:
        word = "gained" if change > 0 else "lost" if change < 0 else "no change:"
        lines.append(f"- Accuracy: {_pct(shipped.get('accuracy'))} against "
                     f"{_pct(report['results'][0].get('accuracy'))} for the original ({word} {abs(change):.2f} "
                     f"points) on {report['data']['holdout_samples']} held-out labelled samples.")
    task = summary.get("task")
    if task:
        lines.append(f"- Task ({task['task']}): {task['metric']} {task['value']:.3f}"
                     + (f" (floor {task['floor']:g})" if task.get("floor") is not None else "")
                     + "".join(f", {k.replace('_', ' ')} {_fmt(v)}" for k, v in task.get("details", {}).items()
                               if v is not None) + ".")
    return lines


def _verification(report: dict[str, Any]) -> list[str]:
    verification, data = report["verification"], report["data"]
    return [f"- {'Passed' if verification['passed'] else 'FAILED'}: " + "; ".join(verification["checks"]) + ".",
            f"- Compared on {data['holdout_samples']} held-out samples"
            + (" (synthetic inputs: no --calib was given, so this checks the conversion, not accuracy)."
               if data["synthetic"] else " that were not used for calibration.")]


def _fit(fit: dict[str, Any]) -> list[str]:
    lines = [f"- Storage: {human_bytes(fit['size_bytes'])} of a {fit['storage_mb']} MB budget."]
    if fit.get("ram_delta_bytes") is not None:
        lines.append(f"- RAM added by loading (measured on this host): {human_bytes(fit['ram_delta_bytes'])} "
                     f"of a {fit['model_ram_mb']} MB model budget.")
    return lines + [f"- **Does not fit:** {problem}" for problem in fit["problems"]]


def _data(data: dict[str, Any]) -> list[str]:
    calibration = data.get("calibration") or (data["source"] if data["calibration_samples"] else None)
    if calibration and calibration != data["source"]:
        lines = [f"- Calibration: {calibration}, {data['calibration_samples']} samples. Verification: "
                 f"{data['source']}, {data['holdout_samples']} samples."]
    elif calibration:
        lines = [f"- Source: {data['source']}; {data['calibration_samples']} samples for calibration, "
                 f"{data['holdout_samples']} held out for verification."]
    else:
        lines = [f"- Verification: {data['source']}, {data['holdout_samples']} samples (none calibrated on)."]
    if data.get("task"):
        lines.append(f"- Task: {data['task']}.")
    return lines + [f"- Warning: {warning}" for warning in data["warnings"]]


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _task(task: dict[str, Any] | None) -> str:
    return "—" if not task else f"{task['metric']} {task['value']:.3f}"


def output_section(fid: dict[str, Any]) -> Section | None:
    """The shipped artifact per output: cosine, worst channel, errors."""
    outputs = fid.get("outputs") or []
    if not outputs:
        return None
    lines = ["Each output compared on its own; channels are taken along the output's feature axis.", "",
             "| output | channels (axis) | cosine min | cosine mean | worst channel | its cosine | its SQNR | "
             "max abs error |", "|---|---|---|---|---|---|---|---|"]
    for o in outputs:
        axis = f"{o['channels']} (axis {o['channel_axis']})" if o.get("channel_axis") is not None else "1"
        if o.get("quiet_channels"):
            axis += f", {o['quiet_channels']} quiet"
        worst = "—" if o.get("worst_channel") is None else str(o["worst_channel"])
        lines.append(f"| {o['name']} | {axis} | {o['cosine_min']:.4f} | {o['cosine_mean']:.4f} | {worst} | "
                     f"{o['worst_channel_cosine']:.4f} | {o['worst_channel_sqnr_db']:.1f} dB | "
                     f"{o['max_abs_error']:.4g} |")
    return Section("Fidelity per output", tuple(lines))


def search_sections(search: dict[str, Any]) -> list[Section]:
    """The candidates table and the sensitivity ranking of a ``--precision auto`` search."""
    timed = ("timed in alternating rounds on the board" if search.get("board") else
             "timed in alternating rounds on this host")
    lines = [f"Budget: {search['budget']}. Speed-ups are against fp32, {timed}.",
             *([f"Speed rule: {search['speed_rule']}."] if search.get("speed_rule") else []),
             *([f"**Cut short:** {search['cut_short']}."] if search.get("cut_short") else []), "",
             "| candidate | float layers | size | vs fp32 | speed-up | cosine min | worst channel | task | Δ top-1 "
             "| result |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in search["candidates"]:
        fid = c.get("fidelity") or {}
        floats = ", ".join(c["float_layers"]) if c["float_layers"] else "—"
        name = f"**{c['label']}**" if c["status"] == "shipped" else c["label"]
        result = c["status"] + (f": {c['reason']}" if c.get("reason") else "")
        lines.append(
            f"| {name} | {floats} | {human_bytes(c.get('size_bytes'))} | {_pct(c.get('size_vs_fp32'))} | "
            f"{_num(c.get('speedup_vs_fp32'), '{:.2f}x')} | {_num(fid.get('cosine_min'))} | "
            f"{_num(fid.get('channel_cosine_min'))} | {_task(fid.get('task'))} | "
            f"{_num(-c['drop_points'] if c.get('drop_points') is not None else None, '{:+.2f} pt')} | {result} |"
        )
    sens = search.get("sensitivity") or {}
    found = [Section("Candidates tried", tuple(lines))]
    if sens.get("layers"):
        found.append(sensitivity_section(sens["layers"], sens["recipe"]))
    return found


def board_name(board: dict[str, Any]) -> str:
    """The board as it described itself: ``Raspberry Pi 4 Model B (ARM Cortex-A72, aarch64, 4 cores)``."""
    info = board.get("board") or {}
    parts = ", ".join(str(v) for v in (info.get("cpu"), info.get("arch"),
                                       f"{info['cores']} cores" if info.get("cores") else None) if v)
    return f"{info['board']} ({parts})" if info.get("board") else parts or board.get("url", "?")


def board_lines(board: dict[str, Any], search: dict[str, Any] | None) -> list[str]:
    """Where the board measured, and what: fp32 and the shipped artifact, then each candidate it timed."""
    info = board.get("board") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items())
    lines = [f"Measured on {board_name(board)} at {board['url']}: {info.get('system') or 'system not given'}, "
             f"{human_bytes(info.get('memory_bytes'))} of memory; {versions}.",
             f"Each artifact was loaded in a child process there, checked against this host's answers on its golden "
             f"samples, then timed at batch 1 and batch {board['batch']} after warm-up, and against fp32 in "
             f"alternating rounds for its speed-up. Measuring took {board['seconds']:.1f} s, uploads included.", "",
             f"| artifact | p50 batch 1 | p90 batch 1 | p50 per sample, batch {board['batch']} | speed-up vs fp32 | "
             "peak memory | added by the model | load | golden check |", "|---|---|---|---|---|---|---|---|---|"]
    rows = [("fp32", board["fp32"]), ("**shipped**", board["shipped"])]
    rows += [(c["label"], c["board"]) for c in (search or {}).get("candidates", ())
             if c.get("board") and c["precision"] != "fp32" and c["status"] != "shipped"]
    for name, t in rows:
        per_sample = t["batch_p50_ms"] / t["batch"] if t.get("batch_p50_ms") and t.get("batch") else None
        lines.append(f"| {name} | {_num(t['p50_ms'], '{:.3f} ms')} | {_num(t['p90_ms'], '{:.3f} ms')} | "
                     f"{_num(per_sample, '{:.3f} ms') if per_sample else t.get('note') or '—'} | "
                     f"{_num(t.get('speedup'), '{:.2f}x')} | {human_bytes(t.get('peak_rss_bytes'))} | "
                     f"{human_bytes(t.get('added_rss_bytes'))} | "
                     f"{_num(t['load_ms'], '{:.0f} ms')} | {t.get('parity') or '—'} |")
    return lines


def sensitivity_section(layers: list[dict[str, Any]], recipe: str | None, top: int = 15) -> Section:
    """The most sensitive layers: output error when each alone is quantized."""
    alone = any(layer.get("cosine_min") is not None for layer in layers)
    how = (f"Each layer quantized alone ({recipe}); error = the worst of 1 − mean cosine (worst output), "
           "1 − worst channel cosine and 1 − the task metric." if alone else
           f"From one calibrated run of {recipe}: error = the noise int8 puts on each layer's weights and input "
           "activations, over their signal power.")
    lines = [how, "", "| # | layer | op | weights | error | cosine min |", "|---|---|---|---|---|---|"]
    for i, layer in enumerate(layers[:top], start=1):
        lines.append(f"| {i} | {layer['display']} | {layer['op']} | {layer['params']:,} | "
                     f"{layer['error']:.2e} | {_num(layer['cosine_min'])} |")
    if len(layers) > top:
        lines.append(f"| | … {len(layers) - top} more in report.json | | | | |")
    return Section("Per-layer sensitivity", tuple(lines))
