"""/metrics against the real tools: promtool's linter, a real Prometheus scraping it, the Grafana dashboard."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers.broker import free_port

from edgec.runtime.config import ServeConfig
from edgec.runtime.server import Server

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "edgec.json"


@pytest.fixture
def serving(fixture_bundle, digits_test):
    server = Server(ServeConfig.from_dict({"port": 0, "models": [
        {"name": "digits", "path": str(fixture_bundle("onnx", "fp32"))},
        {"name": "digits-int8", "path": str(fixture_bundle("tflite", "int8"))}]})).start()
    body = json.dumps({"inputs": digits_test.x[:2].tolist()}).encode()
    for name in ("digits", "digits-int8"):
        for _ in range(7):
            req = urllib.request.Request(f"{server.url}/v1/models/{name}/predict", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=10).read()
    yield server
    server.stop()


def _metrics(server) -> str:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def test_metrics_pass_promtool(serving, system_tool):
    text = _metrics(serving)
    checked = subprocess.run([system_tool("promtool", "prometheus"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'edgec_request_latency_seconds_count{model="digits"} 7' in text
    assert re.search(r'edgec_model_info\{model="digits-int8",version="[0-9a-f]{12}",format="tflite",'
                     r'precision="int8"\} 1', text)


def test_a_real_prometheus_scrapes_the_runtime(serving, tmp_path, system_tool):
    host, port = serving.address
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: edgec\n"
                      f"    static_configs:\n      - targets: ['{host}:{port}']\n")
    prometheus = subprocess.Popen([system_tool("prometheus", "prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL,
                                  stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        query = urllib.parse.quote('edgec_requests_total{model="digits"}')
        result, until = [], time.monotonic() + 60
        while not result and time.monotonic() < until:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/query?query={query}", timeout=5) as resp:
                    result = json.loads(resp.read())["data"]["result"]
            except OSError:
                pass
            time.sleep(0.5)
        assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert result[0]["metric"]["job"] == "edgec" and float(result[0]["value"][1]) == 7
    finally:
        prometheus.terminate()
        prometheus.wait(30)


def test_every_series_the_grafana_dashboard_queries_is_exported(serving):
    dashboard = json.loads(DASHBOARD.read_text())
    exported = {line.split("{")[0].split(" ")[0] for line in _metrics(serving).splitlines()
                if line and not line.startswith("#")}
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    wanted = {name for q in queries for name in re.findall(r"\bedgec_[a-z_]+", q)}
    assert wanted and wanted <= exported, f"not exported: {sorted(wanted - exported)}"
    # The datasource is a variable, so the dashboard imports into any Grafana.
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "instance", "model"}


def test_refused_requests_count_as_their_models_errors_and_responses_by_status(serving):
    """A body that does not decode is the model's error (never a failure); every answer is counted by route
    and status code, with labels from fixed sets only (a made-up path adds no series)."""
    import urllib.error

    def post(path: str, body: bytes) -> int:
        req = urllib.request.Request(serving.url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post("/v1/models/digits/predict", b"{not json") == 400
    assert post("/v2/models/digits/infer", b'{"inputs": [{"name": "input"}]}') == 400
    assert post("/v2/models/nobody/infer", b"{}") == 404
    assert post("/v1/models/digits/predict/../../../etc", b"{}") == 404
    text = _metrics(serving)
    assert 'edgec_request_errors_total{model="digits"} 2' in text, text
    assert 'edgec_request_failures_total{model="digits"} 0' in text
    assert 'edgec_http_responses_total{route="infer",code="200"} 14' in text
    assert 'edgec_http_responses_total{route="infer",code="400"} 2' in text
    assert 'edgec_http_responses_total{route="infer",code="404"} 1' in text
    assert 'edgec_http_responses_total{route="other",code="404"} 1' in text
    assert "nobody" not in text and "etc" not in text
