"""One report shape for every verb: its data for programs and its sections for people.

``convert``, ``analyze``, ``compress`` and ``qat`` each build a :class:`Report`; the writer
(:func:`edgec.sdk.bundle.writer.write_report`) turns it into ``<stem>.json`` (``data``, whole) and
``<stem>.md`` (the title, the lead, then one ``##`` heading per section, in the order added).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Section:
    """One ``##`` part of a report page."""

    title: str
    lines: tuple[str, ...]


@dataclass
class Report:
    """A verb's report.

    Attributes:
        title: The page's ``#`` heading.
        data: Everything measured, as written to the ``.json`` file (plain JSON types).
        lead: Lines under the title, before the first section (what shipped, at a glance).
        sections: The page's parts, in order.
    """

    title: str
    data: dict[str, Any]
    lead: tuple[str, ...] = ()
    sections: list[Section] = field(default_factory=list)

    def add(self, title: str, lines: Iterable[str]) -> Report:
        """Append a section; one with no lines is left out, so callers need not check."""
        lines = tuple(lines)
        if lines:
            self.sections.append(Section(title, lines))
        return self

    def extend(self, sections: Iterable[Section | None]) -> Report:
        """Append sections made elsewhere; ``None`` (a part with nothing to say) is left out."""
        for section in sections:
            if section is not None:
                self.add(section.title, section.lines)
        return self

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        if self.lead:
            lines += [*self.lead, ""]
        for section in self.sections:
            lines += [f"## {section.title}", "", *section.lines, ""]
        return "\n".join(lines).rstrip("\n") + "\n"
