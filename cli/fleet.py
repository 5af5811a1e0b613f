"""Fleet commands: keys and signatures (``edgec keys new``, ``edgec sign``), rollouts (``edgec fleet``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .app import app, err_console, fleet_app, handles_errors, keys_app, out


@keys_app.command("new")
@handles_errors
def keys_new(
    out_path: Path = typer.Option(..., "--out", "-o", help="Private key file; the public key is written beside it as OUT.pub."),
    force: bool = typer.Option(False, "--force", help="Replace key files that exist."),
) -> None:
    """Make an ed25519 key pair for signing bundles.

    \b
    Keep the private key on the host that builds bundles (it is written mode 0600); copy
    OUT.pub to the boards and list it in their runtime.toml as trusted_keys = ["..."].
    \b
    Example:
      edgec keys new --out fleet-key
    """
    from ..sdk.bundle.sign import new_keys

    private, public, kid = new_keys(out_path, force=force)
    out.print(f"private key {escape(str(private))} (keep it secret), public key {escape(str(public))} "
              f"(for the boards), key id {kid}")


@app.command()
@handles_errors
def sign(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `edgec convert`."),
    key: Path = typer.Option(..., "--key", "-k", help="Private key from `edgec keys new`."),
    release: Optional[int] = typer.Option(None, "--release", min=0, help="Release number signed into the manifest (default: the one it has, else the time in ms). Boards refuse an older release than they run unless rolled back."),
) -> None:
    """Sign a bundle's manifest (which lists every file's sha256) with an ed25519 key.

    \b
    The signature is written as manifest.sig in the bundle. Boards with trusted_keys set
    serve only bundles signed by one of them; `edgec verify BUNDLE --key KEY.pub` checks one.
    The manifest gets a release number first (kept when re-signing): a board that trusts
    keys refuses a bundle older than the newest it accepted, unless `edgec fleet rollback`
    (or push --rollback) names it.
    \b
    Example:
      edgec sign build/rpi4 --key fleet-key
      edgec sign build/rpi4 --key fleet-key --release 42     # your CI's build number
    """
    from ..sdk.bundle.sign import sign_bundle
    from ..runtime.bundle.manifest import read_manifest

    kid = sign_bundle(bundle, key, release=release)
    out.print(f"signed {escape(str(bundle))} (release {read_manifest(bundle).release}) with key {kid}")


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


@fleet_app.command("push")
@handles_errors
def fleet_push(
    bundle: Path = typer.Argument(..., help="Bundle folder (signed with `edgec sign` if the boards trust keys)."),
    model: str = typer.Option(..., "--model", "-m", help="Model name on the boards (\\[\\[models]] name)."),
    to: str = typer.Option(..., "--to", help="group:NAME, device:ID or all."),
    canary: int = typer.Option(0, "--canary", help="Update this many boards of the group first; go on only if they are live."),
    broker: str = BROKER, fleet: str = FLEET, username: Optional[str] = USER, password: Optional[str] = PASSWORD,
    ca_file: Optional[Path] = CA,
    key: Optional[Path] = KEY,
    timeout: float = typer.Option(600, "--timeout", help="Seconds to wait for the boards."),
    any_device: bool = typer.Option(False, "--any-device", help="Let boards of another CPU architecture than the bundle's device profile take it (they refuse it otherwise)."),
    take_back: bool = typer.Option(False, "--rollback", help="Deliberately take boards back to a version they replaced (signed boards refuse a replaced version otherwise)."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Push even if no board of the fleet is in the target yet (boards that join later take it)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make BUNDLE the desired version of MODEL for boards, canaries first, and wait for them.

    \b
    Boards that are offline take it when they come back (the desired state and the bundle's
    chunks are retained by the broker). A canary that fails (parity check, load, error rate)
    halts the rollout and is rolled back; exit code 1.
    \b
    Example:
      edgec fleet push build/rpi4 --model digits --to group:pi-lab --canary 2 --broker mqtt://host:1883 --key fleet-key
    """
    from ..sdk.fleet.link import parse_target
    from ..sdk.fleet.rollout import push

    target = parse_target(to)
    err = err_console()
    with _link(broker, fleet, username, password, ca_file, key) as link:
        result = push(link, bundle, model, target, canary=canary, timeout_s=timeout, allow_empty=allow_empty,
                      rollback=take_back, any_device=any_device,
                      progress=lambda message: err.print(escape(message)))
    if as_json:
        out.print_json(data=dataclasses.asdict(result))
    else:
        for device, state in sorted(result.states.items()):
            colour = "green" if state == "live" else "yellow" if state == "pending" else "red"
            reason = f": {escape(result.errors[device])}" if result.errors.get(device) else ""
            out.print(f"{device}: [{colour}]{state}[/]{reason}")
        verdict = "halted after the canaries" if result.halted else "done"
        out.print(f"{model} {result.version} to {to}: {verdict} in {result.seconds:.1f} s "
                  f"({result.blob_bytes} bytes per board)")
    if result.halted or any(state != "live" for state in result.states.values()):
        raise typer.Exit(1)


@fleet_app.command("status")
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

    with _link(broker, fleet, username, password, ca_file) as link:
        rows = status(link, model)
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


@fleet_app.command("rollback")
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


@fleet_app.command("unpin")
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


@fleet_app.command("command")
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


@app.command()
@handles_errors
def dashboard(
    broker: str = BROKER,
    fleet: str = typer.Option("+", "--fleet", help="Only this fleet (+: every fleet on the broker).", envvar="EDGEC_FLEET"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve the page on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", "-p", help="Port to serve the page on."),
    username: Optional[str] = USER, password: Optional[str] = PASSWORD,
    ca_file: Optional[Path] = CA,
    memory_alert: float = typer.Option(0.9, "--memory-alert", min=0.01, max=1.0,
                                       help="Flag a board whose model cache uses this share of its budget."),
    token: Optional[str] = typer.Option(None, "--token", envvar="EDGEC_DASHBOARD_TOKEN",
                                        help="Asked of visitors (open /?token=TOKEN once); required with a --host beyond loopback."),
    forget_after: float = typer.Option(24.0, "--forget-after", min=0.01, help="Hours without a message after which a board leaves the page."),
) -> None:
    """Serve a live web page of the fleet: every board, its models, latency, alerts and rollouts.

    \b
    The page updates itself (server-sent events) from the boards' telemetry on the broker;
    its script and style ship with edgec, so it works without internet. Open the address it
    prints in a browser; Ctrl-C stops it. Served beyond this machine (--host 0.0.0.0) it needs
    --token: open http://HOST:PORT/?token=TOKEN once, scripts send Authorization: Bearer TOKEN.
    \b
    Example:
      edgec dashboard --broker mqtt://localhost:1883 --port 8080
      edgec dashboard --broker mqtt://localhost:1883 --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    from ..sdk.fleet.dashboard import AlertRules, serve
    from ..sdk.fleet.link import parse_broker

    mqtt_host, mqtt_port, tls = parse_broker(broker)
    shown = f"[{host}]" if ":" in host else host
    try:
        serve(mqtt_host, mqtt_port, fleet=fleet, host=host, http_port=port, username=username, password=password,
              tls=tls, ca_file=ca_file, rules=AlertRules(memory_fraction=memory_alert), token=token,
              forget_after_s=forget_after * 3600,
              on_ready=lambda bound: out.print(f"dashboard on http://{shown}:{bound}/{'?token=…' if token else ''} "
                                               f"(edgec/{fleet}/ on {broker}); Ctrl-C stops it"))
    except KeyboardInterrupt:
        pass
