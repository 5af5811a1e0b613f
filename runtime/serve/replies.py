"""What the board's HTTP routes answer with: a :class:`Response`, or an :class:`HttpError` raised on the way;
and the request headers they read (:class:`_Headers`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Response:
    status: int
    body: bytes
    ctype: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, data: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(data).encode(), "application/json", headers or {})


class Headers(dict):
    """A request's headers by lower-case name (uvicorn gives them lower-cased), decoded when read."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        super().__init__(raw)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        value = super().get(name.encode("latin-1"))
        return default if value is None else value.decode("latin-1")


class HttpError(Exception):
    """A request answered with ``status`` and a JSON error; ``close`` ends the connection after it."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.headers, self.close = status, dict(headers or {}), close
