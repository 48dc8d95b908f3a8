"""``cdca device run``: the device client on a stream of frames, with or without a cloud."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from contextlib import ExitStack
from pathlib import Path

from protocol.config.adaptation import DeviceSettings, Gate, Score
from protocol.errors import ConfigError

SCORES, GATES = typing.get_args(Score), typing.get_args(Gate)
TOKEN_ENV = "CDCA_DEVICE_TOKEN"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``run`` under ``cdca device``."""
    run = sub.add_parser(
        "run",
        help="predict a stream of frames with the ONNX student, adapted by the cloud",
        description="Runs the exported student on every frame (JSON lines out), uploads the "
        "most uncertain frames within a budget and applies the prompts the cloud pushes. Works "
        "without --server (last cached prompt) and keeps predicting when the cloud is down. "
        "With --server, the cloud's device settings (its project's [adaptation.device]) "
        "replace --budget, --score, --stat-mix and --prompt-gate when the device registers, "
        "and are kept in --state-dir for the next start.",
    )
    run.add_argument(
        "--input",
        required=True,
        help="frames: file.npz | file.npy | image folder | CIFAR-10-C folder | camera:N",
    )
    run.add_argument("--corruptions", default="", help="with a CIFAR-10-C folder: domains in order")
    run.add_argument("--severity", type=int, help="with CIFAR-10-C-style files: 1..5")
    run.add_argument("--limit", type=int, help="at most this many frames (per domain)")
    run.add_argument(
        "--batch-size", type=int, default=64, help="frames per model call (default: 64)"
    )
    run.add_argument(
        "--model",
        type=Path,
        help="manifest file or model folder "
        "(default: <state-dir>/model, downloaded with --bootstrap)",
    )
    run.add_argument(
        "--bootstrap", action="store_true", help="download the model from --server if missing"
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=Path("device-state"),
        help="upload queue and prompt cache (default: %(default)s)",
    )
    run.add_argument("--server", help="cloud address host:port; omit to run offline")
    run.add_argument("--device-id", default=os.uname().nodename, help="default: the host name")
    run.add_argument("--token", help=f"device token (or ${TOKEN_ENV}, or --token-file)")
    run.add_argument("--token-file", type=Path)
    run.add_argument("--ca-cert", type=Path, help="TLS: the server's CA (PEM); enables TLS")
    run.add_argument("--client-cert", type=Path, help="TLS: this device's certificate")
    run.add_argument("--client-key", type=Path, help="TLS: this device's key")
    defaults = DeviceSettings()
    run.add_argument(
        "--budget", type=float, help=f"largest share of frames uploaded (default {defaults.budget})"
    )
    run.add_argument(
        "--score", choices=SCORES, help=f"uncertainty score (default {defaults.score})"
    )
    run.add_argument("--seed", type=int, default=0, help="for the random share of the uploads")
    run.add_argument(
        "--stat-mix",
        type=float,
        help="1: normalise with each batch's statistics (U-VPA); 0: source "
        f"statistics (default {defaults.stat_mix})",
    )
    run.add_argument(
        "--prompt-gate",
        choices=GATES,
        help="entropy: per batch, answer without the cloud's prompt when that run "
        "is surer (a second model pass while a prompt is in force); "
        f"off: always use the prompt (default {defaults.gate})",
    )
    run.add_argument("--fps", type=float, help="pace frames like a camera (default: flat out)")
    run.add_argument("--drain-seconds", type=float, default=5.0, help="wait for uploads at the end")
    run.add_argument(
        "--queue-items",
        type=int,
        default=1000,
        help="upload batches kept on disk while the cloud is away; the oldest is "
        "dropped (and counted) beyond it",
    )
    run.add_argument(
        "--rpc-timeout", type=float, default=10.0, help="deadline of each call, seconds"
    )
    run.add_argument(
        "--backoff-max",
        type=float,
        default=10.0,
        help="longest wait between reconnection attempts, seconds",
    )
    run.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    run.add_argument("--out", default="-", help="JSON lines: a file, '-' for stdout, 'none'")
    run.add_argument("--summary", type=Path, help="also write the run summary (JSON) here")
    run.add_argument("--log-level", default="INFO")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from device.client import ClientConfig, DeviceClient
    from device.runtime import DeviceRuntime
    from device.sources import open_source

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    token = _token(args) if args.server else ""
    manifest = _manifest(args, token)
    runtime = DeviceRuntime.load(manifest, threads=args.threads)
    link = _link_config(args, token, runtime.manifest.sha256) if args.server else None
    own = {
        "budget": args.budget,
        "score": args.score,
        "stat_mix": args.stat_mix,
        "gate": args.prompt_gate,
    }
    settings = DeviceSettings(**{k: v for k, v in own.items() if v is not None})
    config = ClientConfig(
        args.state_dir,
        settings,
        seed=args.seed,
        fps=args.fps,
        drain_seconds=args.drain_seconds,
        queue_items=args.queue_items,
    )
    corruptions = [c for c in args.corruptions.split(",") if c]
    frames = open_source(
        args.input,
        args.batch_size,
        severity=args.severity,
        corruptions=corruptions,
        limit=args.limit,
    )
    client = DeviceClient(runtime, config, link)
    with ExitStack() as stack:
        out = None
        if args.out == "-":
            out = sys.stdout
        elif args.out != "none":
            out = stack.enter_context(open(args.out, "w"))
        report = client.run(frames, out)
    summary = report.summary()
    text = json.dumps(summary, indent=2)
    print(text, file=sys.stderr)
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(text + "\n")
    return 0


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    if args.token_file:
        if not args.token_file.is_file():
            raise ConfigError(f"token file {args.token_file} not found")
        return str(args.token_file.read_text()).strip()
    if os.environ.get(TOKEN_ENV):
        return str(os.environ[TOKEN_ENV])
    raise ConfigError(
        f"--server needs a token: --token, --token-file or ${TOKEN_ENV} "
        "(the server prints one with `cdca cloud enrol --device ID`)"
    )


def _manifest(args: argparse.Namespace, token: str) -> Path:
    from device.bootstrap import download_model
    from device.link import channel
    from protocol.manifest import MANIFEST_FILE

    path = Path(args.model or args.state_dir / "model")
    if path.suffix != ".json":  # a folder, existing or to download into
        path = path / MANIFEST_FILE
    if path.is_file() or not args.bootstrap:
        return path
    if not args.server:
        raise ConfigError("--bootstrap needs --server")
    with channel(_link_config(args, token, "")) as chan:
        return download_model(
            chan, args.device_id, token, path.parent, timeout=args.rpc_timeout * 6
        )


def _link_config(args: argparse.Namespace, token: str, sha256: str):  # type: ignore[no-untyped-def]
    from device.link import LinkConfig

    return LinkConfig(
        args.server,
        args.device_id,
        token,
        sha256,
        ca_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
        rpc_timeout=args.rpc_timeout,
        backoff_max=args.backoff_max,
    )
