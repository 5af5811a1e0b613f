"""Target formats: one module per format, found through the format table (:mod:`edgec.formats`), and
the exporters that bring each kind of model there (:mod:`.exporters`, keyed by model kind and format).

Each format module exposes ``CONVERTER``, an object implementing
:class:`~edgec.converters.base.Converter`; it is imported only when it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..formats import Format, get_format

if TYPE_CHECKING:  # pragma: no cover
    from .base import Converter


def converter_for(fmt: str | Format, kind: str | None = None) -> Converter:
    """The converter that writes ``fmt``; with a model ``kind``, one that also exports that kind there.

    Raises:
        ValidationError: Unknown format; the message lists the valid ones.
        ConversionError: No exporter takes ``kind`` to ``fmt``.
    """
    entry = fmt if isinstance(fmt, Format) else get_format(fmt)
    converter = importlib.import_module(entry.converter).CONVERTER
    if kind is None:
        return converter
    from .exporters import Routed, route

    return Routed(converter, route(kind, entry.name))
