"""The memory-bounded model cache and the dynamic batcher, on real bundles."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgec.errors import BundleError, InputError
from edgec.runtime import load
from edgec.errors import DeadlineError, QueueFullError
from edgec.runtime.serve.batcher import Batcher
from edgec.runtime.config import BatcherConfig
from edgec.runtime.serve.cache import ModelCache
from edgec.runtime.config import ServeConfig
from edgec.runtime.serve.runtime import Runtime
from edgec.runtime.system import MemoryPressure


@pytest.fixture
def three(fixture_bundle):
    return {"a": fixture_bundle("onnx", "fp32"), "b": fixture_bundle("onnx", "int8"), "c": fixture_bundle("tflite", "int8")}


def test_hits_misses_and_measured_cost(three):
    cache = ModelCache(2**30)
    cache.register("a", three["a"])
    cache.get("a")
    cache.get("a")
    (entry,) = cache.describe()["loaded"]
    files = sum(p.stat().st_size for p in three["a"].iterdir())
    assert entry["file_bytes"] == files and entry["bytes"] >= files
    assert entry["load_seconds"] > 0 and entry["warmup_seconds"] > 0
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


class TenMegabytesPerLoad:
    """A memory reading in which every model load adds exactly 10 MB.

    Real RSS deltas move with whatever else the test process allocates; the eviction policy
    is checked against a steady reading here, and real readings in the test above and in
    benchmarks/runtime.py.
    """

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return (self.calls // 2) * 10 * 2**20  # before/after pairs: +10 MB per load


def test_lru_eviction_under_a_byte_budget_never_evicts_pinned(three):
    files = {n: sum(p.stat().st_size for p in path.iterdir()) for n, path in three.items()}
    # Room for a and one of b, c: never both.
    budget = files["a"] + max(files["b"], files["c"]) + 25 * 2**20
    cache = ModelCache(budget, memory=TenMegabytesPerLoad())
    cache.register("a", three["a"], pinned=True)
    cache.register("b", three["b"])
    cache.register("c", three["c"])
    cache.get("a"), cache.get("b"), cache.get("c")
    loaded = {e["name"] for e in cache.describe()["loaded"]}
    assert loaded == {"a", "c"} and cache.stats.evictions == 1
    assert cache.used_bytes() <= cache.budget_bytes
    cache.get("a")
    cache.get("b")  # back in: c (least recently used, unpinned) goes, a (pinned) stays
    assert {e["name"] for e in cache.describe()["loaded"]} == {"a", "b"}
    assert cache.stats.evictions == 2 and (cache.stats.hits, cache.stats.misses) == (1, 4)


def test_a_model_larger_than_the_budget_is_refused(three):
    cache = ModelCache(1000)
    cache.register("a", three["a"])
    with pytest.raises(BundleError, match="cannot fit the cache budget"):
        cache.get("a")
    assert cache.describe()["loaded"] == [] and cache.stats.load_failures == 1


def test_reload_failure_keeps_the_old_version(three, tmp_path):
    cache = ModelCache(2**30)
    cache.register("a", three["a"])
    before = cache.get("a")
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(BundleError):
        cache.reload("a", tmp_path)
    assert cache.get("a") is before
    cache.reload("a", three["b"])
    assert cache.get("a").manifest.precision == "int8"


class Gate:
    """Holds whoever runs the model inside a real predict until released."""

    def __init__(self, model):
        self.model, self.entered, self.release = model, threading.Event(), threading.Event()

    def __call__(self, feeds):
        self.entered.set()
        self.release.wait(10)
        return self.model.predict(feeds)


def test_full_queue_rejects_at_once_and_bad_requests_fail_alone(fixture_bundle, digits_test):
    gate = Gate(load(fixture_bundle("onnx", "fp32")))
    batcher = Batcher("m", gate, BatcherConfig(max_batch_size=8, max_queue_delay_ms=0, max_queue=2))
    holder = {}
    busy = threading.Thread(target=lambda: holder.update(first=batcher.submit({"input": digits_test.x[:1]})))
    busy.start()  # an idle model runs a request in its caller's thread: here, a client of its own
    assert gate.entered.wait(5)  # the model is busy with the first request
    queued_while_busy = batcher.queue_depth()
    good = batcher.submit({"input": digits_test.x[1:3]})
    bad = batcher.submit({"input": np.zeros((1, 1, 6, 6), np.float32)})
    with pytest.raises(QueueFullError) as info:
        batcher.submit({"input": digits_test.x[:1]})
    assert info.value.retry_after_s > 0 and "2 requests" in str(info.value)
    gate.release.set()
    busy.join(10)
    assert queued_while_busy == 0 and holder["first"].result(10)["output"].shape == (1, 10)
    assert good.result(10)["output"].shape == (2, 10)
    with pytest.raises(InputError, match="dimension 2 must be 8"):
        bad.result(10)
    assert batcher.stats.rejected == 1 and batcher.stats.errors == 1
    batcher.close()


def test_expired_requests_never_run_and_pressure_shrinks_batches(fixture_bundle, digits_test):
    model = load(fixture_bundle("onnx", "fp32"))
    alerts = []
    batcher = Batcher("m", model.predict, BatcherConfig(max_batch_size=8), pressure=lambda: True, alert=alerts.append)
    with pytest.raises(DeadlineError):
        batcher.submit({"input": digits_test.x[:1]}, deadline_s=-1).result(10)
    batcher.submit({"input": digits_test.x[:1]}).result(10)
    assert batcher.stats.expired == 1
    assert batcher.batch_limit < 8 and alerts and "memory pressure" in alerts[0]
    batcher.close()


def test_batch_one_tflite_models_serve_batched_requests(fixture_bundle, digits_test):
    model = load(fixture_bundle("tflite", "int8"))
    batcher = Batcher("m", model.predict, BatcherConfig(max_batch_size=8, max_queue_delay_ms=20))
    futures = [batcher.submit({"input": digits_test.x[i:i + 2]}) for i in range(0, 8, 2)]
    outs = np.concatenate([f.result(10)["output"] for f in futures])
    np.testing.assert_allclose(outs, model.predict(digits_test.x[:8])["output"], atol=1e-6)
    batcher.close()


def test_memory_pressure_reads_the_board_at_most_once_per_interval():
    readings, now = [], [100.0]

    def read() -> int:
        readings.append(now[0])
        return 10 * 2**20  # 10 MB free

    short = MemoryPressure(64 * 2**20, every_s=0.05, read=read, clock=lambda: now[0])
    assert all(short() for _ in range(200)) and len(readings) == 1  # one reading serves the whole interval
    now[0] += 0.049
    assert short() and len(readings) == 1
    now[0] += 0.002
    assert short() and readings == [100.0, 100.051]
    plenty = MemoryPressure(1 * 2**20, every_s=0.05, read=read, clock=lambda: now[0])
    assert not plenty()
    assert MemoryPressure(None, read=read)() is False and len(readings) == 3  # no floor set: never read


def test_a_board_short_of_memory_shrinks_batches_and_alerts(fixture_bundle, digits_test):
    import psutil

    more_than_the_board_has = 2 * psutil.virtual_memory().total / 2**20  # real readings, always short
    rt = Runtime(ServeConfig.from_dict({
        "min_available_mb": more_than_the_board_has, "batcher": {"max_batch_size": 16},
        "models": [{"name": "digits", "path": str(fixture_bundle("onnx", "fp32")), "pinned": True}]}))
    try:
        expected = load(fixture_bundle("onnx", "fp32")).predict(digits_test.x[:1])["output"]
        for _ in range(50):
            out = rt.predict("digits", {"input": digits_test.x[:1]})
        np.testing.assert_allclose(out["output"], expected, atol=1e-6)  # short of memory, still right
        assert rt.batchers["digits"].batch_limit == 1
        assert any(a["kind"] == "memory_pressure" and "batch size for digits cut" in a["message"] for a in rt.alerts)
        assert rt.pressure.readings >= 1
    finally:
        rt.close()
