"""Load a bundle first in a short-lived child process, where a crash or a hang costs nothing.

A model file is native code's input: a damaged or hostile one can crash its backend (a
TFLite flatbuffer with two bytes zeroed can segfault the interpreter at load) or hang it.
Before a serving process loads a bundle, :func:`probe` loads it and runs it once (on its golden inputs, else on zeros) in
a child process; only a bundle that loaded and ran there reaches the serving process, and
one that did not is refused with the reason: the signal that killed the child, or its error.

A helper process (``python -m edgec.runtime.bundle.probe --serve``) imports numpy and the backends
once and forks a child per probe, so a probe costs tens of milliseconds, not an interpreter
start. The helper itself never opens a model. Where ``fork`` does not exist, each probe is a
fresh ``python -m edgec.runtime.bundle.probe BUNDLE``.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ...errors import BundleError, EdgecError, first_line

TIMEOUT_S = 120.0
RSS_POLL_S = 0.05  # how often a child with a memory cap is looked at
_PRELOAD = ("numpy", "edgec.runtime.bundle.model", "onnxruntime")
_helper: subprocess.Popen | None = None
_lock = threading.Lock()
_ids = itertools.count(1)


def probe(bundle: str | Path, *, threads: int | None = None, lean: bool = False,
          timeout_s: float = TIMEOUT_S) -> str | None:
    """Load ``bundle`` and run it on its golden samples (the parity check; zeros when it has none), in a child process.

    Returns:
        What the golden parity check found (None for a bundle without golden samples).

    Raises:
        BundleError: The child crashed, hung past ``timeout_s``, or refused the bundle; the
            message says which and why.
    """
    return _child(bundle, {"threads": threads, "lean": lean}, timeout_s).get("parity")


def measure(bundle: str | Path, *, batch: int, budget_s: float, threads: int | None = None,
            reference: str | Path | None = None, timeout_s: float = TIMEOUT_S,
            max_rss_bytes: int | None = None) -> dict[str, Any]:
    """Load ``bundle`` in a child process, check it on its golden samples, then time it there and read the
    memory it took (:func:`.bench.measure_loaded`); with a ``reference`` bundle, also time the two in
    alternating rounds. The child is killed past ``max_rss_bytes``.

    Raises:
        BundleError: As :func:`probe`, or the child passed ``max_rss_bytes``.
    """
    request = {"threads": threads, "lean": False, "max_rss": max_rss_bytes,
               "measure": {"batch": int(batch), "budget_s": float(budget_s),
                           "reference": str(reference) if reference is not None else None}}
    return _child(bundle, request, timeout_s)["measured"]


def _child(bundle: str | Path, options: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    bundle = Path(bundle)
    request = {"id": next(_ids), "bundle": str(bundle), "timeout": timeout_s, **options}
    result = _ask_helper(request) if hasattr(os, "fork") else _run_alone(request)
    if result.get("ok"):
        return result
    if result.get("signal"):
        raise BundleError(f"loading {bundle.name} crashed its backend ({result['signal']}) in a test process: the "
                          "model file is damaged or unsupported")
    if result.get("timeout"):
        raise BundleError(f"{bundle.name} did not load and run within {timeout_s:g}s in a test process: its model "
                          "hangs the backend")
    if result.get("memory"):
        raise BundleError(f"{bundle.name} took more than {options['max_rss'] >> 20} MB of memory in a test process "
                          "and was stopped")
    raise BundleError(str(result.get("error") or f"{bundle.name} was refused in a test process"))


def _ask_helper(request: dict[str, Any]) -> dict[str, Any]:
    """One probe through the helper process (started, or restarted, as needed)."""
    global _helper
    with _lock:
        for attempt in range(2):
            if _helper is None or _helper.poll() is not None:
                _helper = subprocess.Popen([sys.executable, "-m", "edgec.runtime.bundle.probe", "--serve"],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                           text=True, bufsize=1)
            try:
                _helper.stdin.write(json.dumps(request) + "\n")
                _helper.stdin.flush()
                answer = _answer_to(request["id"], _helper.stdout)
            except (BrokenPipeError, OSError):
                answer = None
            if answer is not None:
                return answer
            _helper.kill()  # the helper itself went away: start another and ask once more
            _helper.wait()
            _helper = None
    return {"ok": False, "error": f"{Path(request['bundle']).name}: the probe helper process failed"}


def _answer_to(request_id: int, stream: Any) -> dict[str, Any] | None:
    """The helper's answer to ``request_id``, skipping any line that is not one (None: the helper died)."""
    for line in stream:
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(answer, dict) and answer.get("id") == request_id:
            return answer
    return None


def _private_stdout() -> Any:
    """Keep this process's stdout for answers only; native code that prints to fd 1 writes to stderr."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return answers


def _run_alone(request: dict[str, Any]) -> dict[str, Any]:
    """One probe in a fresh interpreter (platforms without fork)."""
    command = [sys.executable, "-m", "edgec.runtime.bundle.probe", request["bundle"]]
    if request["threads"]:
        command += ["--threads", str(request["threads"])]
    if request["lean"]:
        command.append("--lean")
    if request.get("measure"):
        command += ["--measure", json.dumps(request["measure"])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=request["timeout"])
    except subprocess.TimeoutExpired:
        return {"ok": False, "timeout": True}
    if done.returncode < 0:
        return {"ok": False, "signal": _signal_name(-done.returncode)}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"ok": False, "error": f"the probe exited with {done.returncode}"}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _load_and_run(bundle: str, threads: int | None, lean: bool,
                  measure: dict[str, Any] | None = None) -> dict[str, Any]:
    """(in the probe's child) Load the bundle, warm it up and run the parity check on its golden samples;
    with ``measure`` (``{"batch", "budget_s", "reference"}``), time it and read the memory it took as well
    (:func:`.bench.measure_loaded`)."""
    from ..system import rss_bytes
    from .model import load
    from .parity import require_parity

    before = rss_bytes()
    try:
        model = load(bundle, threads=threads, lean=lean)
        model.warm_up()
        parity = require_parity(model)
        measured = None
        if measure is not None:
            from .bench import measure_loaded

            measured = measure_loaded(model, parity, measure, threads=threads, rss_before=before)
    except EdgecError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # an error type of the backend's own: the bundle is refused with it
        return {"ok": False, "error": f"{Path(bundle).name}: {type(exc).__name__}: {first_line(exc)}"}
    return {"ok": True, "parity": parity.describe() if parity is not None else None, "measured": measured}


def _fork_one(request: dict[str, Any]) -> dict[str, Any]:
    """(in the helper) Fork a child for one probe; wait for its answer, its death, or the timeout."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: probe, answer, and leave without running the helper's cleanup
        os.close(read)
        try:
            result = _load_and_run(request["bundle"], request.get("threads"), bool(request.get("lean")),
                                   request.get("measure"))
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + float(request.get("timeout") or TIMEOUT_S)
    max_rss = request.get("max_rss")
    data = b""
    while True:
        left = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([read], [], [], min(left, RSS_POLL_S) if max_rss else left)
        over = bool(max_rss) and (_rss_of(pid) or 0) > max_rss
        if over or (not ready and time.monotonic() >= deadline):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return {"ok": False, "memory": True} if over else {"ok": False, "timeout": True}
        if not ready:
            continue
        chunk = os.read(read, 65536)
        if not chunk:
            break
        data += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"ok": False, "signal": _signal_name(os.WTERMSIG(status))}
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        return {"ok": False, "error": f"the probe of {Path(request['bundle']).name} exited without an answer"}


def _rss_of(pid: int) -> int | None:
    """Resident memory of process ``pid`` (Linux ``/proc``; None where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _serve() -> int:
    """The helper: import the runtime once, then fork one child per request read from stdin."""
    import importlib

    answers = _private_stdout()
    for module in _PRELOAD:  # imported once here, shared by every forked child
        try:
            importlib.import_module(module)
        except ImportError:  # a backend this board does not have: its bundles fail in the child
            pass
    try:
        from .backends.tflite import interpreter_class

        interpreter_class()
    except EdgecError:
        pass
    for line in sys.stdin:
        if not line.strip():
            continue
        request: dict[str, Any] = {}
        try:
            request = json.loads(line)
            result = _fork_one(request)
        except Exception as exc:  # the helper answers every request, whatever happens
            result = {"ok": False, "error": f"probe failed: {type(exc).__name__}: {exc}"}
        answers.write(json.dumps({**result, "id": request.get("id")}) + "\n")
        answers.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edgec.runtime.bundle.probe", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lean", action="store_true")
    parser.add_argument("--measure", type=json.loads, default=None, help='time it too: {"batch": 8, "budget_s": 1}')
    parser.add_argument("--serve", action="store_true", help="run as the helper: requests on stdin, answers on stdout")
    args = parser.parse_args(argv)
    if args.serve:
        return _serve()
    if args.bundle is None:
        parser.error("give a bundle, or --serve")
    result = _load_and_run(str(args.bundle), args.threads, args.lean, args.measure)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
