"""The one report shape every verb writes: data as JSON for programs, sections as Markdown for people."""

from __future__ import annotations

import json

from edgec.sdk.bundle.writer import write_report
from edgec.sdk.report.markdown import convert_page
from edgec.sdk.report.page import Report


def _report(**summary):
    return {
        "model": {"source": "m.pt2"}, "device": {"name": "x86-64", "description": "x86"},
        "target": {"format": "onnx", "precision": "int8", "precision_reason": "r", "recipe": {}},
        "results": [{"name": "original (torch)", "size_bytes": 10, "latency": {"p50_ms": 1.0}, "accuracy": 0.95},
                    {"name": "onnx int8", "size_bytes": 5, "latency": {"p50_ms": 0.5}, "accuracy": 0.9667,
                     "fidelity": {"cosine_min": 0.99}, "shipped": True}],
        "summary": {"size_vs_fp32": 0.5, "size_bytes": 5, "speedup_vs_fp32": 2.0, "speedup_vs_original": 2.0,
                    **summary},
        "verification": {"passed": True, "checks": ["ok"]},
        "fit": {"size_bytes": 5, "storage_mb": 1, "model_ram_mb": 1, "problems": []},
        "data": {"source": "test.npz", "calibration": "calib.npz", "calibration_samples": 100,
                 "holdout_samples": 60, "synthetic": False, "warnings": []},
        "host": {"machine": "x86_64", "threads": 2}, "versions": {"edgec": "0"},
    }


def test_report_says_gained_when_int8_is_more_accurate_and_names_both_data_files():
    md = convert_page(_report(accuracy_drop_points=-1.67, accuracy_change_points=1.67)).markdown()
    assert "96.7% against 95.0% for the original (gained 1.67 points)" in md
    assert "Calibration: calib.npz, 100 samples. Verification: test.npz, 60 samples." in md
    md = convert_page(_report(accuracy_drop_points=0.5, accuracy_change_points=-0.5)).markdown()
    assert "(lost 0.50 points)" in md


def test_a_report_page_is_its_title_lead_and_sections_in_order_and_empty_sections_are_left_out(tmp_path):
    report = Report("edgec thing: m.pt2", {"n": 3}, lead=("lead line",))
    report.add("First", ["- a"]).add("Empty", []).add("Second", ("- b", "- c"))
    assert [s.title for s in report.sections] == ["First", "Second"]
    assert report.markdown() == "# edgec thing: m.pt2\n\nlead line\n\n## First\n\n- a\n\n## Second\n\n- b\n- c\n"
    write_report(tmp_path, "thing", report)
    assert json.loads((tmp_path / "thing.json").read_text()) == {"n": 3}
    assert (tmp_path / "thing.md").read_text() == report.markdown()


def test_a_conversion_page_has_one_section_per_part_and_keeps_its_data_whole():
    data = _report(accuracy_drop_points=0.5, accuracy_change_points=-0.5)
    page = convert_page(data)
    assert page.data is data
    assert [s.title for s in page.sections] == ["Summary", "Verification", "Fit on x86-64", "Data",
                                                 "Host and versions"]
    assert page.sections[0].lines[0] == "- Size: 50.0% of the fp32 onnx artifact (5 B)."
    assert "**onnx int8 (shipped)**" in "\n".join(page.lead)
    assert page.markdown().count("\n## ") == len(page.sections)
