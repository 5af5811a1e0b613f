"""Every MQTT topic edgec uses, built in one place for boards and hosts (specified in
``docs/telemetry.schema.json``): ``edgec/<fleet>/<device>/<kind>`` for what a board says and is told,
``edgec/<fleet>/desired/<model>/<target>`` for desired states, ``edgec/<fleet>/blobs/<sha256>/<index>``
for bundle chunks, ``edgec/<fleet>/rollouts/<model>`` for the host's record of a rollout's waves.
``+`` and ``#`` may be passed for any level to make a subscription filter. The second level's
``desired``, ``blobs`` and ``rollouts`` are not device names (:data:`RESERVED`)."""

from __future__ import annotations


RESERVED = frozenset({"desired", "blobs", "rollouts"})


def fleet_root(fleet: str) -> str:
    """``edgec/<fleet>``."""
    return f"edgec/{fleet}"


def device_topic(fleet: str, device: str, kind: str) -> str:
    """What a board publishes or is sent: ``status``, ``telemetry``, ``events``, ``fleet``, ``cmd-result``,
    ``update/<model>``, ``cmd/<verb>``."""
    return f"{fleet_root(fleet)}/{device}/{kind}"


def desired_topic(fleet: str, model: str, target: str) -> str:
    """A desired state; ``target`` is ``all``, ``group/<name>`` or ``device/<id>`` (``#`` for every model:
    pass ``model="#"`` and ``target=""``)."""
    return f"{fleet_root(fleet)}/desired/{model}" + (f"/{target}" if target else "")


def blob_topic(fleet: str, sha256: str, index: int | str) -> str:
    """One chunk of a bundle."""
    return f"{fleet_root(fleet)}/blobs/{sha256}/{index}"


def rollout_topic(fleet: str, model: str) -> str:
    """The host's retained record of the newest rollout of ``model``: its waves, gates and outcome."""
    return f"{fleet_root(fleet)}/rollouts/{model}"
