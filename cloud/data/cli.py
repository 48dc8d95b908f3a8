"""``cdca data``: prepare corrupted benchmarks and inspect prepared folders."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUT = Path("data/fashion-mnist-c")


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
        help="write a corrupted benchmark in the CIFAR-10-C layout (default: Fashion-MNIST-C)",
        description="Corrupt a clean test set with the 15 test and 4 extra corruptions at "
        "severities 1-5 and write <corruption>.npy files in the CIFAR-10-C layout, "
        "labels.npy, dataset.json and a DATASET_CARD.md. Finished files are skipped.",
    )
    prepare.add_argument(
        "--source", default="fashion-mnist",
        help="fashion-mnist | npz:PATH | image-folder:PATH (default: fashion-mnist)",
    )  # fmt: skip
    prepare.add_argument("--data-dir", help="where to look for Fashion-MNIST first (or $CDCA_DATA)")
    prepare.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    prepare.add_argument(
        "--corruptions", default="all",
        help="all | test | extra | comma-separated names (default: all 19)",
    )  # fmt: skip
    prepare.add_argument("--num-images", type=int, default=10_000, help="clean images to corrupt (default: 10000)")
    prepare.add_argument("--image-size", type=int, default=32, help="size for image folders (default: 32)")
    prepare.add_argument("--seed", type=int, default=0, help="corruption seed (default: 0)")
    prepare.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    prepare.add_argument("--force", action="store_true", help="rewrite files already on disk")
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
    from cloud.data.sources import load_source
    from cloud.progress import counted_progress

    corruptions = parse_corruptions(args.corruptions)
    source = load_source(args.source, data_dir=args.data_dir, image_size=args.image_size)
    request = PrepareRequest(
        source=source, out_dir=args.out, corruptions=corruptions, num_images=args.num_images,
        seed=args.seed, workers=args.workers, force=args.force,
    )  # fmt: skip
    with counted_progress("corrupting", len(corruptions) * 5) as advance:
        written = prepare_corrupted(request, progress=advance)
    card = write_dataset_card(args.out, args.command_line, source.images[: args.num_images])
    print(
        f"{args.out}: {len(written)} corruption(s) written, "
        f"{len(corruptions) - len(written)} already there; card: {card}"
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
