"""What every SDK verb shares: its options validated one way, and one progress protocol.

Every verb has one shape (as torchao's ``quantize_(model, config)`` and NNCF's do)::

    result = verb(model, config=None, *, <data>..., out=None, progress=None, **options)

``config`` is the verb's frozen dataclass (:class:`ConvertConfig`, :class:`AnalyzeConfig`,
:class:`CompressConfig`, :class:`QATConfig`), checked when it is built; ``options`` replace
any of its fields by name (:meth:`Options.with_options`), so ``convert(m, device="rpi4")``
and ``convert(m, ConvertConfig(device="rpi4"))`` are the same call. ``progress`` is a
:class:`Progress`: the CLI draws spinners and bars with it, the Python API shows nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ValidationError

C = TypeVar("C", bound="Options")
# A stage hook (a Progress's ``stage``), for the helpers that only open stages.
Step = Callable[[str], contextlib.AbstractContextManager[Any]]


class Options:
    """Mixin for a verb's frozen config dataclass: fields replaced by name, each checked by ``__post_init__``."""

    def with_options(self: C, options: dict[str, Any]) -> C:
        """A copy with ``options`` (any field) replaced; path fields take ``Path``, sequences tuples.

        Raises:
            ValidationError: An option that is not a field, or a value the config refuses.
        """
        fields = {f.name: f for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ValidationError(f"unknown option(s) {', '.join(unknown)}; {type(self).__name__} takes "
                                  f"{', '.join(sorted(fields))}")
        if not options:
            return self
        hints = typing.get_type_hints(type(self))
        coerced = {}
        for name, value in options.items():
            hint = str(hints.get(name, ""))
            if value is not None and "Path" in hint and isinstance(value, str):
                value = Path(value)
            elif "tuple" in hint and isinstance(value, list):
                value = tuple(value)
            coerced[name] = self._coerce(name, value)
        return dataclasses.replace(self, **coerced)  # type: ignore[type-var]

    def _coerce(self, name: str, value: Any) -> Any:
        """A field's value from a looser form (a dict for a nested config); override per config."""
        return value


class Progress:
    """How a long verb says where it is. Subclass it and override what you show; this base shows nothing.

    Example:
        >>> class Printing(Progress):
        ...     def note(self, text): print(text)
        >>> edgec.compress("pkg.nets:cnn", data="train.npz", out="small.pt2", progress=Printing())
    """

    def stage(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A named stage (``Exporting onnx fp32``): entered when it starts, left when it ends or fails."""
        return contextlib.nullcontext()

    def advance(self, done: int, total: int, what: str = "") -> None:
        """``done`` of ``total`` items (layers, epochs) of the current stage finished; ``what`` names them."""

    def note(self, text: str) -> None:
        """One line worth reading now (a step's measured result)."""


SILENT = Progress()
