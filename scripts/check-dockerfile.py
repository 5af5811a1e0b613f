#!/usr/bin/env python3
"""Run deploy/Dockerfile's steps in a plain venv (no Docker daemon needed), then its HEALTHCHECK.

    python scripts/check-dockerfile.py [--keep]

What a ``docker build`` and ``docker run`` would do, done here under a temporary root that
stands in for the image's file system: every path the Dockerfile names (``/src``,
``/opt/edgec``, ``/etc/edgec``, ``/models``, ``/var/lib/edgec``) is moved under it.

1. Reads the Dockerfile: at least two stages, the final one with a non-root ``USER``, an
   ``EXPOSE``, a ``HEALTHCHECK`` on ``/health`` and a ``CMD``.
2. The build stage: ``COPY`` into the root, ``ENV``, every ``RUN`` (``python`` is this
   machine's Python, as the image's ``python`` is the base image's).
3. The final stage: its ``COPY`` lines (``RUN useradd`` is the one step skipped: it changes
   this machine's users; the non-root ``USER`` is checked instead).
4. Starts the image's ``CMD`` (with the image's runtime.toml, serving a committed fixture
   bundle at ``/models/digits``), runs the ``HEALTHCHECK`` command until it passes, stops the
   server with the ``STOPSIGNAL``, and checks the health check then fails.

Prints what it did; exits 1 at the first step that fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IMAGE_PATHS = ("/src", "/opt/edgec", "/etc/edgec", "/models", "/var/lib/edgec", "/run/secrets")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for word, rest in steps:
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, rest))
    return out


class Image:
    """A stand-in for the image's file system under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {"PATH": os.environ["PATH"], "HOME": str(root / "home"), "LANG": "C.UTF-8"}
        self.cwd = root
        bin_dir = root / "usr-bin"
        bin_dir.mkdir(parents=True)
        python = shutil.which("python3") or sys.executable
        (bin_dir / "python").symlink_to(Path(python).resolve())
        self.env["PATH"] = f"{bin_dir}:{self.env['PATH']}"

    def path(self, text: str) -> str:
        """Every image path in ``text`` moved under the root."""
        for image_path in IMAGE_PATHS:
            text = re.sub(rf"(?<![\w/.]){re.escape(image_path)}(?=[/\s\"'\]:,\[]|$)", str(self.root) + image_path, text)
        return text

    def copy(self, rest: str) -> str:
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        if rest.startswith("--from="):
            return f"COPY {rest}: the build stage's files are already in place"
        *sources, dest = args
        target = Path(self.path(dest))
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True, ignore=dockerignore())
            else:
                into = target / src.name if dest.endswith("/") else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, into)
        return f"COPY {rest}"

    def set_env(self, rest: str) -> str:
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            value = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: self.env.get(m.group(1) or m.group(2), ""), value)
            self.env[key] = self.path(value)
        return f"ENV {rest}"

    def run(self, rest: str) -> str:
        command = self.path(rest)
        done = subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"RUN {rest} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
        return f"RUN {rest}"


def dockerignore() -> Any:
    """The repository's .dockerignore as a copytree filter: what the build context leaves out."""
    names = [line.strip().removeprefix("**/") for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return shutil.ignore_patterns(*names)


def exec_form(rest: str) -> list[str]:
    return json.loads(rest) if rest.startswith("[") else ["sh", "-c", rest]


def main() -> int:
    keep = "--keep" in sys.argv[1:]
    text = DOCKERFILE.read_text()
    steps = instructions(text)
    args = {k: v for word, rest in steps if word == "ARG" for k, _, v in [rest.partition("=")]}
    build, final = (stages(steps) + [[], []])[:2] if len(stages(steps)) >= 2 else (None, None)
    problems = []
    if build is None:
        problems.append("needs two stages (build, then a slim runtime)")
    final = final or []
    user = next((rest for word, rest in final if word == "USER"), None)
    health = next((rest for word, rest in final if word == "HEALTHCHECK"), None)
    cmd = next((rest for word, rest in final if word == "CMD"), None)
    stop = next((rest for word, rest in final if word == "STOPSIGNAL"), "SIGTERM")
    if user in (None, "root", "0") or (user or "").startswith("0:"):
        problems.append(f"the final stage must run as a non-root USER (it says {user!r})")
    if health is None or "/health" not in health:
        problems.append("the final stage needs a HEALTHCHECK on /health")
    if cmd is None or not any(word == "EXPOSE" for word, _ in final):
        problems.append("the final stage needs EXPOSE and CMD")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), final[0][1] if final else "")
    if "slim" not in base and "distroless" not in base:
        problems.append(f"the final base image {base!r} is not a slim one")
    if problems:
        print("\n".join(f"FAIL {p}" for p in problems))
        return 1
    print(f"ok   stages: {len(stages(steps))}, final from {base}, USER {user}, HEALTHCHECK on /health, CMD {cmd}")

    tmp = Path(tempfile.mkdtemp(prefix="edgec-image-"))
    image = Image(tmp)
    server = None
    try:
        for label, stage in (("build", build), ("final", final)):
            for word, rest in stage[1:]:
                if word == "COPY":
                    print("ok  ", image.copy(rest))
                elif word == "ENV":
                    print("ok  ", image.set_env(rest))
                elif word == "RUN" and "useradd" in rest:
                    print(f"skip RUN useradd ... (changes this machine's users; USER {user} is checked above)")
                elif word == "RUN":
                    started = time.monotonic()
                    print("ok  ", image.run(rest), f"({time.monotonic() - started:.0f} s)")
                elif word == "WORKDIR":
                    image.cwd = Path(image.path(rest))
                    image.cwd.mkdir(parents=True, exist_ok=True)
        bundle = ROOT / "tests" / "fixtures" / "bundles" / "onnx-int8"
        shutil.copytree(bundle, tmp / "models" / "digits")
        secret = Path(image.path("/run/secrets/mqtt-password"))  # compose mounts the board's broker password here
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text("from-deploy-compose-secrets\n")
        config = tmp / "etc" / "edgec" / "runtime.toml"
        config.write_text(image.path(config.read_text()))
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 8080)) == 0:
                print("FAIL port 8080 is in use here; the image's HEALTHCHECK asks 127.0.0.1:8080")
                return 1
        command = [image.path(a) for a in exec_form(cmd)]
        server = subprocess.Popen(command, cwd=image.cwd, env=image.env, stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / "serve.log", "wb"))
        check = [image.path(a) for a in exec_form(health.split("CMD", 1)[1].strip())]
        until = time.monotonic() + 90
        while subprocess.run(check, env=image.env, capture_output=True).returncode != 0:
            if server.poll() is not None or time.monotonic() > until:
                print(f"FAIL the HEALTHCHECK never passed: {(tmp / 'serve.log').read_text()[-1500:]}")
                return 1
            time.sleep(0.5)
        print("ok   CMD started; HEALTHCHECK passes")
        server.send_signal(getattr(signal, stop.strip()))
        code = server.wait(30)
        if subprocess.run(check, env=image.env, capture_output=True).returncode == 0:
            print("FAIL the HEALTHCHECK still passes with the server stopped")
            return 1
        print(f"ok   {stop.strip()} stopped it (exit {code}); the HEALTHCHECK then fails, as it should")
        return 0
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
