"""The progress hook every long SDK verb takes: ``step(name)`` returns a context manager."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

Step = Callable[[str], contextlib.AbstractContextManager[Any]]


@contextlib.contextmanager
def silent_step(_: str) -> Iterator[None]:
    """A progress hook that shows nothing (the Python API's default)."""
    yield
