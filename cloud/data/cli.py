"""``cdca data``: prepare corrupted benchmarks and inspect prepared folders."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from cloud.project_cli import add_project_arguments, project_from_args


def main(argv: Sequence[str], prog: str = "cdca data") -> int:
    """Parse ``argv`` and run one data sub-command; returns the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description="Benchmark data tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _add_prepare(sub)
    info = sub.add_parser("info", help="list the domains, sizes and classes of a prepared folder")
    info.add_argument("path", help="[kind:]PATH, e.g. data/fashion-mnist-c or cifar10-c:/data/CIFAR-10-C")
    info.set_defaults(handler=_run_info)
    args = parser.parse_args(argv)
    args.command_line = " ".join([prog, *(shlex.quote(a) for a in argv)])  # quoted in the dataset card
    return int(args.handler(args))


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    prepare = sub.add_parser(
        "prepare",
        help="write the project's shifted benchmark (default: Fashion-MNIST-C)",
        description="Corrupt the project's clean test images (data.test, or the share of "
        "data.train held out when it is empty; at data.image_size) with the 15 test and 4 "
        "extra corruptions at severities 1-5, and write <corruption>.npy files in the "
        "CIFAR-10-C layout, labels.npy, dataset.json and a DATASET_CARD.md into data.shifted. "
        "Finished files are skipped.",
        epilog="examples:\n  cdca data prepare\n  cdca data prepare --project cdca.toml\n"
        "  cdca data prepare --source npz:digits.npz --image-size 32 --out data/digits-c",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("--source", help="data.test: fashion-mnist | npz:FILE | image-folder:DIR")
    prepare.add_argument("--data-dir", help="data.data_dir: Fashion-MNIST's IDX files")
    prepare.add_argument("--out", type=Path, help="data.shifted: the folder to write")
    prepare.add_argument(
        "--corruptions", default="all",
        help="all | test | extra | comma-separated names (default: all 19)",
    )
    prepare.add_argument("--num-images", type=int,
                         help="the first N test images only (default: all)")
    prepare.add_argument("--image-size", type=int, help="data.image_size: side in pixels")
    prepare.add_argument("--seed", type=int, default=0, help="corruption seed (default: 0)")
    prepare.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    prepare.add_argument("--force", action="store_true", help="rewrite files already on disk")
    add_project_arguments(prepare)
    prepare.set_defaults(handler=_run_prepare)


def parse_corruptions(spec: str) -> list[str]:
    """``all``, ``test``, ``extra`` or a comma-separated list, checked against the suite."""
    from cloud.data.corruptions import EXTRA_CORRUPTIONS, TEST_CORRUPTIONS, check_corruption

    groups = {
        "all": [*TEST_CORRUPTIONS, *EXTRA_CORRUPTIONS],
        "test": list(TEST_CORRUPTIONS),
        "extra": list(EXTRA_CORRUPTIONS),
    }
    if spec in groups:
        return groups[spec]
    return [check_corruption(name.strip()) for name in spec.split(",") if name.strip()]


def _run_prepare(args: argparse.Namespace) -> int:
    from cloud.data.card import write_dataset_card
    from cloud.data.prepare import PrepareRequest, prepare_corrupted
    from cloud.data.splits import load_split
    from cloud.progress import counted_progress
    from protocol.errors import ConfigError

    project = project_from_args(args, {
        "data.test": args.source, "data.data_dir": args.data_dir, "data.image_size": args.image_size,
        "data.shifted": args.out,
    })
    out = Path(project.data.shifted)
    if ":" in project.data.shifted:
        raise ConfigError(f"data.shifted = {project.data.shifted!r} names a published benchmark; "
                          "prepare writes a folder: give --out DIR")
    corruptions = parse_corruptions(args.corruptions)
    source = load_split(project.data, "test", args.num_images)
    request = PrepareRequest(
        source=source, out_dir=out, corruptions=corruptions, num_images=len(source),
        seed=args.seed, workers=args.workers, force=args.force,
    )
    with counted_progress("corrupting", len(corruptions) * 5) as advance:
        written = prepare_corrupted(request, progress=advance)
    card = write_dataset_card(out, args.command_line, source.images)
    print(
        f"{out}: {len(written)} corruption(s) written, "
        f"{len(corruptions) - len(written)} already there ({len(source)} images of "
        f"{len(source.class_names)} classes at {source.images.shape[1]} px); card: {card}"
    )
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from cloud.data.formats import open_benchmark

    dataset = open_benchmark(args.path)
    names = dataset.corruptions()
    print(f"{args.path}: {len(names)} corruptions, {len(dataset.class_names)} classes")
    print("classes: " + ", ".join(dataset.class_names))
    for name in names:
        sample = dataset.load(name, 1, count=1)
        print(f"  {name:<20} image shape {sample.images.shape[1:]}")
    return 0
