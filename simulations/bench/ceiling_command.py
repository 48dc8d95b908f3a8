"""``cdca bench ceiling``: arguments, the run, and ``ceiling.json`` / ``ceiling.md``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from cloud.export.device_model import DeviceModel
    from cloud.students.preprocess import Normalization


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ceiling`` under ``cdca bench``."""
    # ``cdca bench``'s parser already imports the method table, which brings these
    from simulations.bench.ceiling import NORM_SCOPES

    ceiling = sub.add_parser(
        "ceiling",
        help="how far prompt parts could move the device if fitted on true labels",
        description="For each corruption, fits the chosen prompt parts of the device model on "
        "the true labels of the first --train frames (the device's batch statistics live) and "
        "scores them on the rest, next to BN-adapt on the same frames. An upper reference for "
        "U-VPA with those parts: no cloud target does better than the labels. Writes "
        "ceiling.json and ceiling.md.",
    )
    ceiling.add_argument("--data", default="data/fashion-mnist-c", help="prepared benchmark")
    ceiling.add_argument(
        "--student", type=Path, default=None, help="distilled student (default: the shipped one)"
    )
    ceiling.add_argument(
        "--parts",
        default="norm_affine",
        help="comma-separated prompt parts: prompt, input_affine, norm_affine, "
        "class_vectors (default: %(default)s, U-VPA's default)",
    )
    ceiling.add_argument(
        "--fit-norms",
        choices=NORM_SCOPES,
        default="encoder",
        help="which BatchNorms' scale/shift norm_affine may change: the "
        "encoder's (U-VPA's default) or every one (default: %(default)s)",
    )
    ceiling.add_argument(
        "--corruptions",
        default="test",
        help="test | comma-separated names (default: the 15 test corruptions)",
    )
    ceiling.add_argument("--severity", type=int, default=5)
    ceiling.add_argument(
        "--num-per-domain",
        type=int,
        default=1000,
        help="frames per domain, fitted and scored (default: %(default)s)",
    )
    ceiling.add_argument(
        "--train",
        type=int,
        default=512,
        help="labelled frames per domain to fit on (default: %(default)s)",
    )
    ceiling.add_argument("--steps", type=int, default=150, help="Adam steps (default: %(default)s)")
    ceiling.add_argument(
        "--lr", type=float, default=1e-2, help="Adam step size (default: %(default)s)"
    )
    ceiling.add_argument("--batch-size", type=int, default=64, help="device batch (default: 64)")
    ceiling.add_argument("--seed", type=int, default=0)
    ceiling.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ceiling.add_argument(
        "--out", type=Path, default=Path("runs/bench-ceiling"), help="output folder"
    )
    ceiling.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the student, fit and score every domain with a progress bar, write and print."""
    import torch

    from cloud.data.cli import parse_corruptions
    from cloud.data.formats import open_benchmark
    from cloud.progress import counted_progress
    from cloud.shipped import SHIPPED_DISTILLED
    from simulations.bench.ceiling import (
        CeilingConfig,
        PromptCeiling,
        markdown,
        measure_ceiling,
        to_json,
    )
    from simulations.streams import Segment, check_available

    config = CeilingConfig(
        tuple(p.strip() for p in args.parts.split(",") if p.strip()),
        args.num_per_domain,
        args.train,
        args.steps,
        args.lr,
        args.batch_size,
        args.severity,
        args.seed,
        args.fit_norms,
    )
    torch.set_num_threads(args.threads)
    student = args.student or SHIPPED_DISTILLED
    ceiling = PromptCeiling(*_device_model(student), config)
    dataset = open_benchmark(args.data)
    corruptions = parse_corruptions(args.corruptions)
    check_available(
        dataset, [Segment(c, config.severity, config.num_per_domain) for c in corruptions]
    )
    with counted_progress("fitting", len(corruptions), width=24) as advance:
        rows = measure_ceiling(ceiling, dataset, corruptions, advance)
    settings: dict[str, object] = {"data": args.data, "student": str(student), **vars(config)}
    settings["parts"] = ",".join(config.parts)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ceiling.json").write_text(json.dumps(to_json(rows, settings), indent=2) + "\n")
    (args.out / "ceiling.md").write_text(markdown(rows, settings))
    print((args.out / "ceiling.md").read_text())
    print(f"wrote {args.out / 'ceiling.json'}, {args.out / 'ceiling.md'}")
    return 0


def _device_model(path: Path) -> tuple[DeviceModel, torch.Tensor, Normalization]:
    """(DeviceModel, class vectors, normalisation) of a distilled student; a clear error otherwise."""
    from cloud.distill.checkpoint import load_distilled
    from cloud.export.device_model import DeviceModel
    from cloud.weights_io import read_metadata

    meta = read_metadata(path, kind="student checkpoint", make_it="cdca cloud distill")
    if "embed_dim" not in meta:
        raise ConfigError(
            f"{path} is a label-trained student; the prompt ceiling needs the "
            "device model of a distilled one (`cdca cloud distill`)"
        )
    distilled, vectors, info = load_distilled(path)
    return DeviceModel(distilled, image_size=info.image_size), vectors, info.normalization
