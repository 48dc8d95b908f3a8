"""``cdca cloud serve``, ``cdca cloud enrol`` and ``cdca cloud devices``."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from cloud.server.config import ServerConfig, TLSConfig, load_config
from cloud.server.registry import DeviceRegistry

_DEFAULTS = ServerConfig()


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the server commands under ``cdca cloud``."""
    serve = sub.add_parser(
        "serve",
        help="run the cloud server devices connect to (gRPC)",
        description="Serves the device model, takes devices' uploads, learns prompts with U-VPA "
        "and pushes them back. Settings come from --config (TOML), then the flags below. State "
        "(registry, prompt banks, unprocessed uploads, the served model) lives in --state-dir and "
        "survives restarts. Enrol devices first with `cdca cloud enrol`.",
    )
    serve.add_argument("--config", type=Path, help="TOML file (see cloud/server/config.py)")
    serve.add_argument("--host", help=f"default: {_DEFAULTS.host}")
    serve.add_argument("--port", type=int, help=f"default: {_DEFAULTS.port}; 0 picks a free one")
    serve.add_argument("--state-dir", type=Path, help=f"default: {_DEFAULTS.state_dir}")
    serve.add_argument("--student", type=Path, help="distilled student checkpoint")
    serve.add_argument("--teacher", help="builtin | open_clip name | local-dir:PATH")
    serve.add_argument("--model-dir", type=Path, help="serve this exported model folder")
    serve.add_argument(
        "--companion", type=Path,
        help="companion checkpoint (`cdca train companion`) added to the ensemble target",
    )  # fmt: skip
    serve.add_argument(
        "--synthetic", type=int, metavar="N",
        help="add N clean training images rendered like each device's environment to every "
        "fit (192 in `cdca bench adapt`'s uvpa_synthetic; 4x the cloud compute; needs the "
        "Fashion-MNIST training split); default: 0, none",
    )  # fmt: skip
    serve.add_argument("--upload-budget", type=float, help="largest share of frames accepted")
    serve.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, help="require client certs signed by this CA")
    serve.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    serve.add_argument("--verbose", action="store_true", help="debug logging")
    serve.set_defaults(handler=_serve)

    enrol = sub.add_parser(
        "enrol",
        help="add a device to a server's registry and print its token",
        description="Prints a fresh random token (or stores --token). Only its SHA-256 is kept.",
    )
    enrol.add_argument("--device", required=True, help="device id (letters, digits, . _ -)")
    enrol.add_argument("--token", help="use this token instead of a random one")
    enrol.add_argument("--state-dir", type=Path, default=_DEFAULTS.state_dir)
    enrol.set_defaults(handler=_enrol)

    devices = sub.add_parser("devices", help="list enrolled devices and their counters")
    devices.add_argument("--state-dir", type=Path, default=_DEFAULTS.state_dir)
    devices.set_defaults(handler=_devices)


def _serve(args: argparse.Namespace) -> int:
    from cloud.server.serve import serve

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # some imports configure the root logger; ours wins
    )
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("cdca cloud serve: --tls-cert and --tls-key go together")
        tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
    config = load_config(
        args.config, host=args.host, port=args.port, state_dir=args.state_dir,
        student=args.student, teacher=args.teacher, model_dir=args.model_dir,
        companion=args.companion, synthetic=args.synthetic,
        upload_budget=args.upload_budget, tls=tls,
    )  # fmt: skip
    asyncio.run(serve(config, args.port_file))
    return 0


def _enrol(args: argparse.Namespace) -> int:
    from cloud.server.serve import registry_path

    registry = DeviceRegistry(registry_path(args.state_dir))
    token = registry.enrol(args.device, args.token)
    registry.close()
    print(token)
    return 0


def _devices(args: argparse.Namespace) -> int:
    from cloud.server.serve import registry_path

    path = registry_path(args.state_dir)
    if not path.is_file():
        raise SystemExit(f"cdca cloud devices: no registry in {args.state_dir}; enrol a device")
    registry = DeviceRegistry(path)
    print(f"{'device':<24} {'frames':>9} {'accepted':>9} {'refused':>8} {'prompt v':>8}")
    for device_id in registry.device_ids():
        r = registry.record(device_id)
        assert r is not None
        print(f"{r.device_id:<24} {r.frames_seen:>9} {r.accepted:>9} {r.refused:>8} "
              f"{r.prompt_version:>8}")  # fmt: skip
    registry.close()
    return 0
