"""``cdca bench ceiling``: arguments, the run, and ``ceiling.json`` / ``ceiling.md`` / ``ceiling.png``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.project_cli import add_project_arguments, project_from_args
from protocol.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from cloud.adaptation.synthetic import EnvironmentRenderer
    from cloud.export.device_model import DeviceModel
    from cloud.students.preprocess import Normalization
    from simulations.bench.ceiling import Parameterisation
    from simulations.bench.ceiling_data import FitSettings


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ceiling`` under ``cdca bench``."""
    from simulations.bench.ceiling import PARAMETERISATIONS
    from simulations.bench.ceiling_data import FIT_SOURCES

    ceiling = sub.add_parser(
        "ceiling",
        help="how far each way of steering the device could move it, fitted on true labels",
        description="For each corruption and each parameterisation (the prompt parts the "
        "device graph takes, and richer ones it would need), fits the parameters on true "
        "labels and scores them on the domain's frames after --train (the device's batch "
        "statistics live), next to BN-adapt on the same frames. Fit sources: stream (the "
        "domain's first --train frames), renderer (the project's training images rendered "
        "like the domain's first --uploads frames, as U-VPA's synthetic samples are), oracle "
        "(those images under the domain's true corruption: a perfect renderer). An upper "
        "reference: no cloud target does better than the labels. Writes ceiling.json, "
        "ceiling.md and ceiling.png.",
        epilog="example: cdca bench ceiling --fit-on stream,oracle --corruptions fog,contrast",
    )
    ceiling.add_argument("--data", default="data/fashion-mnist-c", help="prepared benchmark")
    ceiling.add_argument(
        "--student", type=Path, default=None, help="distilled student (default: the shipped one)"
    )
    ceiling.add_argument(
        "--parameterisations",
        default=",".join(PARAMETERISATIONS),
        help="comma-separated, from: " + ", ".join(PARAMETERISATIONS) + " (default: all)",
    )
    ceiling.add_argument(
        "--fit-on",
        default="stream",
        help=f"comma-separated fit sources, from: {', '.join(FIT_SOURCES)} (default: %(default)s)",
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
        help="frames per domain the stream source fits on; the rest are scored (default: %(default)s)",
    )
    ceiling.add_argument(
        "--uploads",
        type=int,
        default=100,
        help="frames the renderer estimates each domain from (default: %(default)s, "
        "10 %% of 1,000)",
    )
    ceiling.add_argument(
        "--clean-images",
        type=int,
        default=2048,
        help="training images the renderer and the oracle fit on (default: %(default)s)",
    )
    ceiling.add_argument("--steps", type=int, default=150, help="Adam steps (default: %(default)s)")
    ceiling.add_argument("--batch-size", type=int, default=64, help="device batch (default: 64)")
    ceiling.add_argument("--seed", type=int, default=0)
    ceiling.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ceiling.add_argument(
        "--out", type=Path, default=Path("runs/bench-ceiling"), help="output folder"
    )
    add_project_arguments(ceiling)
    ceiling.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Check everything, load the student, fit every domain with a progress bar, write and print."""
    import torch

    from cloud.data.cli import parse_corruptions
    from cloud.data.formats import open_benchmark
    from cloud.progress import counted_progress
    from cloud.shipped import SHIPPED_DISTILLED
    from simulations.bench.ceiling import PromptCeiling, parameterisation
    from simulations.bench.ceiling_data import FitSets, check_sources
    from simulations.bench.ceiling_report import markdown, plot
    from simulations.bench.ceiling_run import measure_ceiling
    from simulations.streams import Segment, check_available

    how = [parameterisation(n.strip()) for n in args.parameterisations.split(",") if n.strip()]
    sources = [s.strip() for s in args.fit_on.split(",") if s.strip()]
    corruptions = parse_corruptions(args.corruptions)
    check_sources(sources, corruptions)
    settings = _fit_settings(args)
    if not how or args.steps < 1 or args.batch_size < 2:
        raise ConfigError("need one parameterisation or more, --steps >= 1 and --batch-size >= 2")
    torch.set_num_threads(args.threads)
    student = args.student or SHIPPED_DISTILLED
    model, vectors, normalization, class_names = _device_model(student)
    dataset = open_benchmark(args.data)
    check_available(dataset, [Segment(c, args.severity, args.num_per_domain) for c in corruptions])
    renderer = None
    if set(sources) - {"stream"}:
        renderer = _renderer(args, class_names, model.image_size, settings.clean_images)
    ceiling = PromptCeiling(model, vectors, args.steps, args.batch_size, args.seed)
    fit_sets = FitSets(normalization, settings, renderer)
    total = len(corruptions) * len(sources) * len(how)
    with counted_progress("fitting", total, width=24) as advance:
        result = measure_ceiling(
            ceiling,
            fit_sets,
            dataset,
            corruptions,
            args.severity,
            args.num_per_domain,
            how,
            sources,
            advance,
        )
    config = _config(args, student, how, sources)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ceiling.json").write_text(json.dumps(result.to_json(config), indent=2) + "\n")
    (args.out / "ceiling.md").write_text(markdown(result, config))
    plot(result, args.out / "ceiling.png")
    print((args.out / "ceiling.md").read_text())
    print(f"wrote {args.out / 'ceiling.json'}, ceiling.md and ceiling.png")
    return 0


def _fit_settings(args: argparse.Namespace) -> FitSettings:
    from simulations.bench.ceiling_data import FitSettings

    if not 0 < args.train < args.num_per_domain:
        raise ConfigError(
            f"--train ({args.train}) must be between 1 and --num-per-domain - 1 "
            f"({args.num_per_domain - 1}): the rest of each domain is what gets scored"
        )
    if not 0 < args.uploads <= args.num_per_domain or args.clean_images < 1:
        raise ConfigError("--uploads must be in 1..--num-per-domain and --clean-images >= 1")
    return FitSettings(args.train, args.uploads, args.clean_images, args.seed)


def _config(
    args: argparse.Namespace, student: Path, how: list[Parameterisation], sources: list[str]
) -> dict[str, object]:
    return {
        "data": args.data,
        "student": str(student),
        "parameterisations": ",".join(p.name for p in how),
        "fit_on": ",".join(sources),
        "corruptions": args.corruptions,
        "severity": args.severity,
        "num_per_domain": args.num_per_domain,
        "train_count": args.train,
        "uploads": args.uploads,
        "clean_images": args.clean_images,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }


def _renderer(
    args: argparse.Namespace, class_names: list[str], image_size: int, count: int
) -> EnvironmentRenderer:
    """U-VPA's renderer over the project's training images (data.train), ``count`` per call."""
    from cloud.adaptation.clean_set import clean_renderer
    from protocol.config.adaptation import SyntheticConfig

    project = project_from_args(args)
    config = SyntheticConfig(count=count, seed=args.seed)
    return clean_renderer(project.data, class_names, image_size, config)


def _device_model(path: Path) -> tuple[DeviceModel, torch.Tensor, Normalization, list[str]]:
    """(DeviceModel, class vectors, normalisation, class names) of a distilled student."""
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
    model = DeviceModel(distilled, image_size=info.image_size)
    return model, vectors, info.normalization, list(info.class_names)
