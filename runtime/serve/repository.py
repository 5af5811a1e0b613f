"""The model repository extension: which bundles this board could serve, and loading or unloading one by name.

It is Triton's (``POST /v2/repository/index``, ``/v2/repository/models/NAME/load`` and ``/unload`` over
HTTP, ``RepositoryIndex``, ``RepositoryModelLoad`` and ``RepositoryModelUnload`` over gRPC): what
tritonclient's ``get_model_repository_index``, ``load_model`` and ``unload_model`` call. Every route takes the
admin token.

The repository is the configured models, plus every bundle folder directly inside the folders reloads may
load from (``model_roots``, default the configured models' parents), named by its folder. A request
names a model and never a path: a name is looked up in that listing, made by listing the roots, so no
received string is joined to a path. A load goes through the cache like any other (signatures, the
isolated first load, the memory budget); an unload answers the requests already queued, then drops the
model. Loading from files sent with the request (tritonclient's ``config``/``files``) is refused: a
board serves bundles that ``edgec convert`` wrote and verified.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ...errors import EdgecError, InputError
from ..bundle.manifest import MANIFEST_NAME, read_manifest

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
MAX_LISTED = 1000  # bundle folders read per root


class Repository:
    """The repository of a :class:`~edgec.runtime.serve.runtime.Runtime` (which makes it: not imported here)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.unloaded: set[str] = set()

    def bundles(self) -> dict[str, Path]:
        """Every model the board could serve, by name: the configured ones first, then the roots' bundle folders."""
        config = self.runtime.config
        found = {m.name: m.path for m in config.models}
        taken = {p.resolve() for p in found.values()}
        for root in config.roots():
            try:
                children = sorted(root.iterdir())[:MAX_LISTED]
            except OSError:
                continue
            for child in children:
                resolved = child.resolve()
                if (NAME.fullmatch(child.name) and child.name not in found and resolved not in taken
                        and resolved.is_relative_to(root) and (child / MANIFEST_NAME).is_file()):
                    found[child.name] = child
                    taken.add(resolved)
        return found

    def index(self, ready: bool = False) -> list[dict[str, str]]:
        """One row per model: ``name``, ``version``, ``state`` (``READY`` or ``UNAVAILABLE``) and ``reason``."""
        rt = self.runtime
        rows = []
        for name, path in self.bundles().items():
            try:
                version = read_manifest(path).version
            except EdgecError as exc:
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": str(exc)})
                continue
            if rt.model_ready(name):
                rows.append({"name": name, "version": rt.running_version(name) or version, "state": "READY",
                             "reason": ""})
            else:
                reason = rt.failed.get(name) or ("unloaded" if name in self.unloaded else "not loaded")
                rows.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason})
        return [r for r in rows if r["state"] == "READY"] if ready else rows

    def load(self, name: str, parameters: Any = ()) -> dict[str, Any]:
        """Serve ``name`` from its bundle: a served model is reloaded (its new version swapped in), another added.
        ``parameters``: the names of the request's parameters (a config or files sent along are refused).

        Raises:
            InputError: The request sent a config or files to load from.
            KeyError: No model of that name in the repository.
            BundleError, IntegrityError: The bundle is refused; what was served before still is.
        """
        if set(parameters) - {"unload_dependents"}:
            raise InputError("edgec loads bundles from its model folders only: a load with a config or files is "
                             "refused; put the bundle in model_roots and load it by name")
        path = self.bundles()[name]
        rt = self.runtime
        entry = rt.reload(name) if name in rt.batchers else rt.add(name, path)
        self.unloaded.discard(name)
        return entry

    def unload(self, name: str) -> None:
        """Stop serving ``name`` (a model already unloaded stays so).

        Raises:
            KeyError: No model of that name in the repository.
        """
        if name not in self.bundles() and name not in self.runtime.batchers:
            raise KeyError(name)
        self.runtime.remove(name)
        self.unloaded.add(name)

    def http(self, verb: str, name: str | None, body: bytes) -> Any:
        """One HTTP request of the extension (``index``, ``load`` or ``unload``), its JSON body checked.

        Raises:
            InputError: A body that is not a JSON object, or a load that sends a config or files.
            KeyError, BundleError: As :meth:`load` and :meth:`unload`.
        """
        try:
            data = json.loads(body) if body.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError("the body must be a JSON object")
        if verb == "index":
            return self.index(ready=data.get("ready") is True)
        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InputError('"parameters" must be a JSON object')
        if verb == "load":
            return self.load(name or "", parameters)
        self.unload(name or "")
        return None
