"""Keep converter chatter (C++ logs, progress bars, banners) off the user's terminal.

Exporters and quantizers print to the process's file descriptors, not only to Python's
streams, so the capture works at the descriptor level. What they printed is kept and
attached to the error if the step fails. ``EDGEC_VERBOSE=1`` turns the capture off.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

_lock = threading.Lock()


class Captured:
    """What a quiet block printed (available after the block ends)."""

    text: str = ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def quiet() -> Iterator[Captured]:
    """Redirect file descriptors 1 and 2 into a temporary file for the block."""
    captured = Captured()
    if os.environ.get("EDGEC_VERBOSE"):
        yield captured
        return
    # Some libraries print through Python's sys.stdout (which a host program may have
    # replaced), others straight to the descriptors: catch both.
    streams = io.StringIO()
    with _lock, tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(streams), contextlib.redirect_stderr(streams):
                yield captured
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text = sink.read()[-50_000:].decode("utf-8", errors="replace") + streams.getvalue()[-50_000:]
            captured.text = text
