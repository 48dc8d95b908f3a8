"""``cdca cloud serve``, ``cdca cloud enrol``, ``cdca cloud revoke`` and ``cdca cloud devices``."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from cloud.project_cli import add_project_arguments, project_from_args
from cloud.server.registry import DeviceRegistry
from protocol.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the server commands under ``cdca cloud``."""
    serve = sub.add_parser(
        "serve",
        help="run the cloud server devices connect to (gRPC)",
        description="Serves the project's device model, takes devices' uploads, learns prompts "
        "with U-VPA and pushes them back; each device gets the project's [adaptation.device] "
        "settings when it registers. Settings come from the project file ([server], "
        "[adaptation], [teacher], [student]), then the flags below. State (registry, prompt "
        "banks, unprocessed uploads, the served model, the settings it ran with) lives in "
        "server.state_dir and survives restarts. Enrol devices first with `cdca cloud enrol`.",
        epilog="example: cdca cloud serve --project cdca.toml --port 50051",
    )
    add_project_arguments(serve)
    serve.add_argument("--host", help="server.host: address to listen on")
    serve.add_argument("--port", type=int, help="server.port; 0 picks a free one")
    serve.add_argument("--state-dir", type=Path, help="server.state_dir")
    serve.add_argument(
        "--model-dir", type=Path, help="server.model_dir: serve this exported folder"
    )
    serve.add_argument("--student", type=Path, help="student.checkpoint: the distilled student")
    serve.add_argument("--teacher", help="teacher.model: builtin | open_clip name | local-dir:DIR")
    serve.add_argument("--upload-budget", type=float, help="adaptation.device.budget")
    serve.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="adaptation.synthetic.count: rendered training images per fit (0: none)",
    )
    serve.add_argument("--tls-cert", type=Path, help="server.tls.cert (PEM)")
    serve.add_argument("--tls-key", type=Path, help="server.tls.key (PEM)")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        help="server.tls.client_ca: require client certs signed by this CA",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="server.metrics_port: the Prometheus endpoint (default 9464; 0 picks a free one)",
    )
    serve.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="server.ray_address: fit on Ray actors; 'local' starts a Ray here, 'auto' or "
        "HOST:PORT joins a cluster (ray start --head)",
    )
    serve.add_argument("--workers", type=int, help="server.ray_workers: Ray actors (default 2)")
    serve.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    serve.add_argument("--verbose", action="store_true", help="debug logging")
    serve.set_defaults(handler=_serve)

    enrol = sub.add_parser(
        "enrol",
        help="add a device to a server's registry and print its token",
        description="Prints a fresh random token (or stores --token). Only its SHA-256 is kept. "
        "Enrolling a device again gives it a new token (the old one stops working) and lifts "
        "a revocation. Refused beyond the project's server.max_devices.",
    )
    enrol.add_argument("--device", required=True, help="device id (letters, digits, . _ -)")
    enrol.add_argument("--token", help="use this token instead of a random one")
    enrol.add_argument(
        "--ttl-days",
        type=float,
        help="the token expires after this many days; 0: never (default: the "
        "project's server.limits.token_ttl_days, 365)",
    )
    _add_state_dir(enrol)
    enrol.set_defaults(handler=_enrol)

    revoke = sub.add_parser(
        "revoke",
        help="refuse a device from now on (and, with --forget, drop all it contributed)",
        description="Takes effect on the device's next call, also on a running server. With "
        "--forget the running server (or the next one started on this state folder) also "
        "drops the device's queued uploads, its prompts and its entries in the fleet's "
        "environment bank, and the shared prompt stops counting it. `cdca cloud enrol` lets "
        "it back in with a new token.",
        epilog="example: cdca cloud revoke --device cam-7 --forget",
    )
    revoke.add_argument("--device", required=True, help="the device id")
    revoke.add_argument(
        "--forget", action="store_true", help="also drop everything the device contributed"
    )
    _add_state_dir(revoke)
    revoke.set_defaults(handler=_revoke)

    devices = sub.add_parser("devices", help="list enrolled devices and their counters")
    _add_state_dir(devices)
    devices.set_defaults(handler=_devices)

    status = sub.add_parser(
        "status",
        help="a running server's metrics: devices, uploads, refusals, queue, fits, staleness",
        description="Reads the server's Prometheus endpoint (server.metrics_port; a running "
        "server leaves its URL in the state folder) and prints it for a person: devices "
        "enrolled and connected, uploads, refusals by status code, the queue, fit passes, "
        "prompt staleness and each device's last-prompt age.",
        epilog="example: cdca cloud status --state-dir /srv/cdca",
    )
    _add_state_dir(status)
    status.add_argument("--url", help="the endpoint, e.g. http://10.0.0.5:9464/metrics")
    status.set_defaults(handler=_status)


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="the server's state folder (default: the project's server.state_dir)",
    )
    add_project_arguments(parser)


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir or project_from_args(args).server.state_dir)


def _serve(args: argparse.Namespace) -> int:
    from cloud.server.serve import serve

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # some imports configure the root logger; ours wins
    )
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    flags = {
        "server.host": args.host,
        "server.port": args.port,
        "server.metrics_port": args.metrics_port,
        "server.ray_address": args.ray,
        "server.ray_workers": args.workers,
        "server.state_dir": args.state_dir,
        "server.model_dir": args.model_dir,
        "student.checkpoint": args.student,
        "teacher.model": args.teacher,
        "adaptation.device.budget": args.upload_budget,
        "adaptation.synthetic.count": args.synthetic,
        "server.tls.cert": args.tls_cert,
        "server.tls.key": args.tls_key,
        "server.tls.client_ca": args.tls_client_ca,
    }
    asyncio.run(serve(project_from_args(args, flags), args.port_file))
    return 0


def _enrol(args: argparse.Namespace) -> int:
    from cloud.server.serve import registry_path

    server = project_from_args(args).server
    ttl = server.limits.token_ttl_days if args.ttl_days is None else args.ttl_days
    if ttl < 0:
        raise ConfigError("--ttl-days must be >= 0 (0: the token never expires)")
    registry = DeviceRegistry(registry_path(Path(args.state_dir or server.state_dir)))
    try:
        token = registry.enrol(
            args.device, args.token, ttl_days=ttl, max_devices=server.max_devices
        )
    finally:
        registry.close()
    print(token)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from cloud.server.serve import registry_path

    path = registry_path(_state_dir(args))
    if not path.is_file():
        raise ConfigError(f"no registry at {path}: is --state-dir the server's state folder?")
    registry = DeviceRegistry(path)
    try:
        if not registry.revoke(args.device, forget=args.forget):
            raise ConfigError(f"no device {args.device!r} in {path}: see `cdca cloud devices`")
    finally:
        registry.close()
    what = "refused from now on" + (
        "; the server drops everything it contributed" if args.forget else ""
    )
    print(f"device {args.device!r} {what}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from cloud.server.status import metrics_url, report, scrape

    url = args.url or metrics_url(_state_dir(args))
    print(report(url, scrape(url)))
    return 0


def _devices(args: argparse.Namespace) -> int:
    from cloud.server.serve import registry_path

    state_dir = _state_dir(args)
    path = registry_path(state_dir)
    if not path.is_file():
        raise ConfigError(f"no registry in {state_dir}; enrol a device with `cdca cloud enrol`")
    registry = DeviceRegistry(path)
    print(f"{'device':<24} {'frames':>9} {'accepted':>9} {'refused':>8} {'prompt v':>8}")
    revoked = set(registry.revoked_ids())
    for device_id in sorted([*registry.device_ids(), *revoked]):
        r = registry.record(device_id)
        assert r is not None
        print(
            f"{r.device_id:<24} {r.frames_seen:>9} {r.accepted:>9} {r.refused:>8} "
            f"{r.prompt_version:>8}{'  (revoked)' if device_id in revoked else ''}"
        )
    registry.close()
    return 0
