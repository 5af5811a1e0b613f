"""``edgec fleet``: rollouts to boards over MQTT (push, status, rollback, unpin, command), and the broker options
the fleet tools share."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .app import err_console, handles_errors, out

group = typer.Typer(help="Roll bundles out to boards over MQTT: push (with canaries), status, rollback.",
                    no_args_is_help=True)


def _link(broker: str, fleet: str, username: Optional[str], password: Optional[str], ca_file: Optional[Path],
          key: Optional[Path] = None):
    from ..sdk.fleet.link import FleetLink, parse_broker

    host, port, tls = parse_broker(broker)
    signer = None
    if key is not None:
        from ..sdk.bundle.sign import control_signer

        signer = control_signer(key)
    return FleetLink(host, port, fleet=fleet, tls=tls, username=username, password=password, ca_file=ca_file,
                     signer=signer)


BROKER = typer.Option(..., "--broker", "-b", help="The fleet's MQTT broker: mqtt://host:1883 or mqtts://host:8883.")
FLEET = typer.Option("default", "--fleet", help="Fleet name (the boards' \\[telemetry] fleet).", envvar="EDGEC_FLEET")
USER = typer.Option(None, "--username", help="Broker user.")
PASSWORD = typer.Option(None, "--password", help="Broker password (or EDGEC_MQTT_PASSWORD).", envvar="EDGEC_MQTT_PASSWORD")
CA = typer.Option(None, "--ca-file", help="CA certificate that verifies an mqtts:// broker with its own CA.")
KEY = typer.Option(None, "--key", help="The fleet's private key (edgec keys new): signs the desired state, which boards with trusted_keys require (or EDGEC_FLEET_KEY).", envvar="EDGEC_FLEET_KEY")


@group.command("push")
@handles_errors
def fleet_push(
    bundle: Path = typer.Argument(..., help="Bundle folder (signed with `edgec sign` if the boards trust keys)."),
    model: str = typer.Option(..., "--model", "-m", help="Model name on the boards (\\[\\[models]] name)."),
    to: str = typer.Option(..., "--to", help="group:NAME, device:ID or all."),
    canary: int = typer.Option(0, "--canary", help="Update this many boards of the group first; go on only if they are live."),
    waves: Optional[str] = typer.Option(None, "--waves", help="Roll out in waves: numbers of boards or shares, the rest last, e.g. 1,10%,rest (--canary K is --waves K)."),
    where: Optional[list[str]] = typer.Option(None, "--where", help="Only boards with these [fleet] tags, e.g. --where site=shop-3 --where hw=rpi4 (repeat, or comma-separate)."),
    success_rate: float = typer.Option(1.0, "--success-rate", help="Share of a wave's boards that must be live before the next wave starts."),
    abort_rate: Optional[float] = typer.Option(None, "--abort-rate", help="Halt and roll back fleet-wide when more than this share of the boards so far failed (default: any failure before the last wave)."),
    broker: str = BROKER, fleet: str = FLEET, username: Optional[str] = USER, password: Optional[str] = PASSWORD,
    ca_file: Optional[Path] = CA,
    key: Optional[Path] = KEY,
    timeout: float = typer.Option(600, "--timeout", help="Seconds to wait for the boards."),
    any_device: bool = typer.Option(False, "--any-device", help="Let boards of another CPU architecture than the bundle's device profile take it (they refuse it otherwise)."),
    take_back: bool = typer.Option(False, "--rollback", help="Deliberately take boards back to a version they replaced (signed boards refuse a replaced version otherwise)."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Push even if no board of the fleet is in the target yet (boards that join later take it)."),
    blob_dir: Optional[Path] = typer.Option(None, "--blob-dir", help="Write the bundle here as <sha256>.tar instead of publishing it on the broker (with --blob-url)."),
    blob_url: Optional[str] = typer.Option(None, "--blob-url", help="The http(s) URL a web server serves --blob-dir at; boards download from it with range requests."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make BUNDLE the desired version of MODEL for boards, canaries first, and wait for them.

    \b
    Boards that are offline take it when they come back (the desired state and the bundle's
    chunks are retained by the broker). A canary that fails (parity check, load, error rate)
    halts the rollout and is rolled back; exit code 1. For many boards, serve the bundle from
    a web server instead (--blob-dir, --blob-url): the broker then carries only the desired state.
    \b
    Examples:
      edgec fleet push build/rpi4 --model digits --to group:pi-lab --canary 2 --broker mqtt://host:1883 --key fleet-key
      edgec fleet push build/rpi4 --model digits --to all --blob-dir /srv/www/edgec --blob-url https://host/edgec/ ...
    """
    from ..sdk.fleet.link import parse_target
    from ..sdk.fleet.rollout import push
    from ..sdk.fleet.waves import parse_where

    target = parse_target(to)
    err = err_console()
    with _link(broker, fleet, username, password, ca_file, key) as link:
        result = push(link, bundle, model, target, canary=canary, waves=waves, where=parse_where(where),
                      success_rate=success_rate, abort_rate=abort_rate, timeout_s=timeout, allow_empty=allow_empty,
                      rollback=take_back, any_device=any_device, blob_dir=blob_dir, blob_url=blob_url,
                      progress=lambda message: err.print(escape(message)))
    if as_json:
        out.print_json(data=dataclasses.asdict(result))
    else:
        for device, state in sorted(result.states.items()):
            colour = "green" if state == "live" else "yellow" if state == "pending" else "red"
            reason = f": {escape(result.errors[device])}" if result.errors.get(device) else ""
            out.print(f"{escape(device)}: [{colour}]{escape(state)}[/]{reason}")
        verdict = {"done": "done", "halted": "halted", "rolled_back": "halted and rolled back"}[result.state]
        verdict += f" ({escape(result.reason)})" if result.reason else ""
        out.print(f"{model} {result.version} to {to}: {verdict} in {result.seconds:.1f} s "
                  f"({result.blob_bytes} bytes per board)")
    if result.halted or any(state != "live" for state in result.states.values()):
        raise typer.Exit(1)


@group.command("status")
@handles_errors
def fleet_status(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Only this model."),
    broker: str = BROKER, fleet: str = FLEET, username: Optional[str] = USER, password: Optional[str] = PASSWORD,
    ca_file: Optional[Path] = CA,
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Per board: desired and running version, update state, progress, last error.

    \b
    Example:
      edgec fleet status --model digits --broker mqtt://host:1883
    """
    from rich.table import Table

    from ..sdk.fleet.link import status

    from ..sdk.fleet.waves import describe

    with _link(broker, fleet, username, password, ca_file) as link:
        rows = status(link, model)
        with link._lock:
            rollouts = [describe(r) for m, r in sorted(link.rollouts.items()) if model is None or m == model]
    if as_json:
        out.print_json(data=rows)
        return
    table = Table(title=f"fleet {fleet}")
    for col in ("device", "groups", "model", "desired", "running", "state", "progress", "pinned", "error", "age"):
        table.add_column(col)
    for r in rows:
        progress = f"{100 * r['progress']:.0f}%" if r["progress"] is not None else "-"
        table.add_row(r["device"], ",".join(r["groups"]), r["model"], r["desired"] or "-", r["running"] or "-",
                      r["state"] or "-", progress, r.get("pinned") or "-", escape((r["error"] or "")[:60]),
                      f"{r['age_s']:.0f}s")
    out.print(table)
    for line in rollouts:
        out.print(escape(line))


@group.command("rollback")
@handles_errors
def fleet_rollback(
    model: str = typer.Option(..., "--model", "-m", help="Model name on the boards."),
    to: str = typer.Option(..., "--to", help="group:NAME, device:ID or all (as pushed)."),
    broker: str = BROKER, fleet: str = FLEET, username: Optional[str] = USER, password: Optional[str] = PASSWORD,
    ca_file: Optional[Path] = CA,
    key: Optional[Path] = KEY,
) -> None:
    """Make the version pushed before the current one desired again.

    \b
    Example:
      edgec fleet rollback --model digits --to group:pi-lab --broker mqtt://host:1883
    """
    from ..sdk.fleet.link import parse_target
    from ..sdk.fleet.rollout import rollback

    with _link(broker, fleet, username, password, ca_file, key) as link:
        back = rollback(link, model, parse_target(to))
    out.print(f"{model} on {to}: desired version is {back['version']} again; boards switch back as they see it")


@group.command("unpin")
@handles_errors
def fleet_unpin(
    device: str = typer.Argument(..., help="The board's name."),
    model: str = typer.Option(..., "--model", "-m", help="Model name on the board."),
    broker: str = BROKER, fleet: str = FLEET, username: Optional[str] = USER, password: Optional[str] = PASSWORD,
    ca_file: Optional[Path] = CA,
) -> None:
    """Clear a board's device-level desired version (a canary's, or a pin): it follows its group again.

    \b
    `edgec fleet status` shows pins in its "pinned" column.
    Example:
      edgec fleet unpin pi-kitchen --model digits --broker mqtt://host:1883
    """
    from ..sdk.fleet.link import unpin

    with _link(broker, fleet, username, password, ca_file) as link:
        was = unpin(link, model, device)
    out.print(f"{model} on {device}: " + (f"pin to {was} cleared; it follows its group again" if was
                                          else "was not pinned (nothing to clear)"))


@group.command("command")
@handles_errors
def fleet_command(
    device: str = typer.Argument(..., help="The board's name (\\[telemetry] device)."),
    verb: str = typer.Argument(..., help="reload, stats or interval."),
    args: Optional[list[str]] = typer.Option(None, "--arg", help="KEY=VALUE for the command (a JSON value or a string), e.g. --arg seconds=5, --arg model=digits."),
    broker: str = BROKER, fleet: str = FLEET, username: Optional[str] = USER, password: Optional[str] = PASSWORD,
    ca_file: Optional[Path] = CA,
    key: Optional[Path] = KEY,
    timeout: float = typer.Option(30, "--timeout", help="Seconds to wait for the board's answer."),
) -> None:
    """Send one command to a board and print its answer (signed with --key: boards that trust keys need it).

    \b
    Examples:
      edgec fleet command pi-kitchen interval --arg seconds=5 --broker mqtt://host:1883 --key fleet-key
      edgec fleet command pi-kitchen reload --arg model=digits --broker mqtt://host:1883 --key fleet-key
    """
    from ..errors import InputError
    from ..sdk.fleet.link import command

    body: dict = {}
    for item in args or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"--arg {item!r} must look like KEY=VALUE")
        try:
            body[name] = json.loads(value)
        except ValueError:
            body[name] = value
    with _link(broker, fleet, username, password, ca_file, key) as link:
        answer = command(link, device, verb, body, timeout_s=timeout)
    out.print_json(data=answer)
    if not answer.get("ok"):
        raise typer.Exit(1)


capture = typer.Typer(help="Samples boards kept of what they served (\\[capture] in their runtime.toml).",
                      no_args_is_help=True)
group.add_typer(capture, name="capture")


@capture.command("pull")
@handles_errors
def capture_pull(
    board: str = typer.Option(..., "--board", help="The board's address, e.g. http://pi-kitchen:8080."),
    model: str = typer.Option(..., "--model", "-m", help="Model name on the board."),
    dest: Path = typer.Option(..., "--out", "-o", help="The .npz to write (edgec convert --calib/--eval take it)."),
    token: str = typer.Option(..., "--token", help="The board's admin_token (or EDGEC_ADMIN_TOKEN).",
                              envvar="EDGEC_ADMIN_TOKEN"),
    max_mb: float = typer.Option(256, "--max-mb", help="Refuse an answer larger than this."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Fetch the samples a board kept of one model's served data, as an .npz keyed by its input names.

    \b
    The samples never leave the board unasked: this is the asking (admin token).
    Examples:
      edgec fleet capture pull --board http://pi-kitchen:8080 --model digits --token $TOKEN --out field.npz
      edgec convert model.pt2 --device rpi4 --calib field.npz --out build/rpi4-next
    """
    from ..sdk.fleet.capture import pull

    got = pull(board, model, token, dest, max_mb=max_mb, force=force)
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(got["reasons"].items())) or "none"
    out.print(escape(f"{got['samples']} sample(s) of {model} ({reasons}), {got['bytes'] / 1024:.0f} kB -> {dest}"))

