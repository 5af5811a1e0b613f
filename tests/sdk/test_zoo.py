"""The example data is the same in every process: tests and benchmarks measure on it."""

from __future__ import annotations

import subprocess
import sys


def test_sentences_do_not_depend_on_what_the_process_imported():
    # A package's attributes include whichever of its submodules were imported; the sentence
    # set once grew with them, so the transformer tests measured other data inside the suite.
    script = (
        "from edgec.sdk.examples.zoo import sentences\n"
        "before = sentences()\n"
        "import email.mime.text, json.tool, logging.handlers, unittest.mock, http.server, concurrent.futures\n"
        "after = sentences()\n"
        "assert len(before) > 500, len(before)\n"
        "assert before == after, (len(before), len(after))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
