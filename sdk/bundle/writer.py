"""The one way SDK verbs write their output: everything goes to a staging folder beside the target
and is renamed into place only once complete, so a failure leaves nothing half-written behind.

:func:`output` makes a folder (a bundle, an analysis, QAT artifacts); :func:`output_files`
makes files side by side (a compressed ``.pt2`` and its report); :func:`write_report` writes a
:class:`~edgec.sdk.report.page.Report` as ``.json`` for programs and ``.md`` for people.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

from ..._version import __version__
from ...errors import BundleError
from ..report.page import Report

log = logging.getLogger("edgec.convert")

_PACKAGES = ("numpy", "torch", "onnx", "onnxscript", "onnxruntime", "litert-torch", "ai-edge-quantizer", "ai-edge-litert",
             "tensorflow-cpu", "tensorflow", "keras", "tf2onnx")


def check_out_dir(out: Path, *, force: bool) -> None:
    """Refuse an existing output folder unless ``force``; refuse a file in the way always."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} is a file: choose a folder path for the bundle")
    if out.exists() and not force:
        raise BundleError(f"output folder {out} already exists: pass --force to replace it, or choose another --out")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.check-", dir=parent))  # can we write there at all?
    except FileExistsError:
        raise BundleError(f"--out {out}: {parent} is a file, not a folder; choose a folder path for the bundle") \
            from None
    except NotADirectoryError:
        raise BundleError(f"--out {out}: a part of {parent} is a file, not a folder; choose another --out") from None
    except OSError as exc:
        raise BundleError(f"--out {out}: cannot write in {parent} ({exc.strerror}); choose another --out") from None


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out``; removed on any failure inside the block.

    Its name carries this process's id, so folders left by a run that was killed (its
    process gone) are swept here by the next run that writes beside them.
    """
    out = out.resolve()
    sweep_stale(out)
    stage = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        stage.mkdir(parents=True)
    except OSError as exc:
        raise BundleError(f"cannot create the bundle beside {out} ({exc.strerror}); choose another --out") from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextlib.contextmanager
def output(out: Path, *, force: bool) -> Iterator[Path]:
    """A staging folder that becomes ``out`` when the block ends well (replacing it only with ``force``).

    Raises:
        BundleError: ``out`` is in the way, or cannot be written.
    """
    out = Path(out)
    check_out_dir(out, force=force)
    with staging(out) as stage:
        yield stage
        publish(stage, out, force=force)


@contextlib.contextmanager
def output_files(paths: Sequence[Path], *, force: bool) -> Iterator[Path]:
    """A staging folder in which the block writes each of ``paths`` by its name; all are moved into place
    together when it ends well.

    Raises:
        BundleError: One of them exists (without ``force``), or their folder cannot be written.
    """
    paths = [Path(p).resolve() for p in paths]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise BundleError(f"{existing[0]} already exists: pass --force to replace it")
    check_out_dir(paths[0].parent, force=True)
    with staging(paths[0]) as stage:
        yield stage
        for path in paths:
            staged = stage / path.name
            with open(staged, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(staged, path)
        shutil.rmtree(stage, ignore_errors=True)


def write_report(folder: Path, stem: str, report: Report) -> None:
    """``<stem>.json`` (the report's data, for programs) and ``<stem>.md`` (its page, for people) in ``folder``."""
    (folder / f"{stem}.json").write_text(json.dumps(report.data, indent=2) + "\n", encoding="utf-8")
    (folder / f"{stem}.md").write_text(report.markdown(), encoding="utf-8")


def sweep_stale(out: Path) -> list[Path]:
    """Clean up after runs writing ``out`` whose process is gone (killed mid-way).

    Their staging folders are removed. A replaced bundle (``.old-``) is put back as ``out``
    when the run died between moving it aside and moving the new one in, else removed.
    """
    swept = []
    for path in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-*")):
        kind, _, rest = path.name[len(out.name) + 2:].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("staging", "old") or not pid.isdigit() or not path.is_dir() or _alive(int(pid)):
            continue
        if kind == "old" and not out.exists():
            path.rename(out)
            log.warning("restored %s, which a killed run had moved aside", out)
            continue
        shutil.rmtree(path, ignore_errors=True)
        swept.append(path)
    if swept:
        log.info("removed %d folder(s) left beside %s by killed runs", len(swept), out)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def publish(stage: Path, out: Path, *, force: bool) -> Path:
    """Move a complete staging folder to ``out`` (replacing it when ``force``)."""
    out = out.resolve()
    for path in stage.iterdir():  # flush file contents before the rename makes them visible
        os.chmod(path, 0o644)  # (some exporters write their files executable)
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if out.exists():
        if not force:
            shutil.rmtree(stage, ignore_errors=True)
            raise BundleError(f"output folder {out} appeared while converting: pass --force to replace it")
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    try:
        stage.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def versions() -> dict[str, str]:
    """Versions of edgec, Python and the converters present, for the manifest."""
    found = {"edgec": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found
