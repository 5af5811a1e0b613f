"""Target formats: one module per format, found through the format table (:mod:`edgec.formats`).

Each module exposes ``CONVERTER``, an object implementing
:class:`~edgec.converters.base.Converter`; it is imported only when it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..formats import Format, get_format

if TYPE_CHECKING:  # pragma: no cover
    from .base import Converter


def converter_for(fmt: str | Format) -> Converter:
    """The converter that writes ``fmt``.

    Raises:
        ValidationError: Unknown format; the message lists the valid ones.
    """
    entry = fmt if isinstance(fmt, Format) else get_format(fmt)
    return importlib.import_module(entry.converter).CONVERTER
