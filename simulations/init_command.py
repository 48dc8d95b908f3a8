"""``cdca init``: start a project from a labelled image set; writes a commented ``cdca.toml``.

Like ``flwr new``, it gives the user a file to edit rather than flags to remember. It reads
the data once: the classes (and the order their labels take), how many images each has,
and their sizes, which decide ``image_size`` and ``resize``; then it prints the commands
that take the project from there to a running fleet (docs/your-own-data.md).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol.config.data import DataConfig
from protocol.config.loader import toml_value
from protocol.config.project import PROJECT_FILE, load_project
from protocol.errors import ConfigError, DataError

FEW_IMAGES = 20  # a class with fewer is warned about: too few to train or test on
TEST_SHARE = DataConfig.test_share  # the share init writes: the schema's default


@dataclass(frozen=True)
class Survey:
    """What ``cdca init`` learned from the data."""

    spec: str  # the source as the project file names it
    class_names: tuple[str, ...]
    counts: tuple[int, ...]  # images per class
    sizes: Counter[tuple[int, int]]  # (width, height) -> images


def main(argv: Sequence[str], prog: str = "cdca init") -> int:
    """Parse ``argv``, survey the data, write the project file; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Start a cdca project from your labelled images: reads the classes, counts "
        "and sizes, and writes a commented project file (cdca.toml) that every cdca command "
        "reads. Edit it, then follow the commands it prints (docs/your-own-data.md).",
        epilog="examples:\n  cdca init image-folder:photos --dir my-project\n"
        "  cdca init npz:digits.npz --image-size 32 --resize stretch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", help="image-folder:DIR (one folder per class), npz:FILE, or a path"
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("."), help="the project folder (default: .)"
    )
    parser.add_argument(
        "--image-size", type=int, help="side the models take (default: from the data)"
    )
    parser.add_argument(
        "--resize",
        choices=("pad", "crop", "stretch", "none"),
        help="how other sizes are fitted (default: none when every image has the "
        "same size, else crop)",
    )
    parser.add_argument(
        "--teacher",
        default="builtin",
        help="builtin (trained on your data) or an open_clip name, e.g. ViT-B-32",
    )
    parser.add_argument("--pretrained", default="", help="open_clip pretrained tag, e.g. openai")
    parser.add_argument("--force", action="store_true", help="overwrite an existing cdca.toml")
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    target = folder / PROJECT_FILE
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists; edit it, or pass --force to write a new one")
    survey = survey_source(args.source, folder)
    size, resize = _geometry(survey, args.image_size, args.resize)
    text = project_text(survey, size, resize, args.teacher, args.pretrained)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    try:
        load_project(tmp)  # what init writes must load: checked before it takes the name
    except ConfigError:
        tmp.unlink()
        raise
    tmp.replace(target)
    _report(survey, size, resize, target)
    return 0


def survey_source(source: str, folder: Path) -> Survey:
    """Classes, counts and sizes of ``source`` (``kind:PATH`` or a plain path)."""
    kind, sep, rest = source.partition(":")
    if not sep or "/" in kind:
        path = Path(source)
        kind, rest = ("npz" if path.suffix == ".npz" else "image-folder"), source
    path = Path(rest).resolve()
    spec = f"{kind}:{_relative(path, folder)}"
    if kind == "npz":
        return _survey_npz(path, spec)
    if kind == "image-folder":
        return _survey_folder(path, spec)
    raise ConfigError(f"cdca init takes image-folder:DIR or npz:FILE, got {source!r}")


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _survey_npz(path: Path, spec: str) -> Survey:
    import numpy as np

    from cloud.data.sources import read_npz

    data = read_npz(path)  # checks keys, dtype and labels
    height, width = data.images.shape[1:3]
    counts = np.bincount(data.labels, minlength=len(data.class_names))
    return Survey(
        spec,
        tuple(data.class_names),
        tuple(int(c) for c in counts),
        Counter({(int(width), int(height)): len(data)}),
    )


def _survey_folder(root: Path, spec: str) -> Survey:
    from PIL import Image

    from cloud.data.sources import class_folders

    folders = class_folders(root)  # the loaders' own checks: folders, empty classes
    counts: list[int] = []
    sizes: Counter[tuple[int, int]] = Counter()
    for _, files in folders:
        counts.append(len(files))
        for path in files:
            try:
                with Image.open(path) as image:  # reads the header only
                    sizes[image.size] += 1
            except OSError as err:
                raise DataError(f"cannot read image {path}: {err}") from err
    return Survey(spec, tuple(name for name, _ in folders), tuple(counts), sizes)


def _geometry(survey: Survey, size: int | None, resize: str | None) -> tuple[int, str]:
    """The project's image size and resize policy from the data, unless the user chose."""
    if len(survey.class_names) < 2:
        raise DataError(f"{survey.spec} has {len(survey.class_names)} class; cdca needs at least 2")
    ((common, _),) = survey.sizes.most_common(1)
    uniform = len(survey.sizes) == 1 and common[0] == common[1]
    size = size or min(common)
    if resize is None:
        resize = "none" if uniform and size == common[0] else "crop"
    return size, resize


def project_text(survey: Survey, size: int, resize: str, teacher: str, pretrained: str) -> str:
    """The commented project file."""
    names = "[" + ", ".join(toml_value(n) for n in survey.class_names) + "]"
    builtin = teacher == "builtin"
    teacher_lines = (
        [
            'model = "builtin"  # cdca\'s small CLIP, trained on these images by `cdca train teacher`',
            'checkpoint = "models/teacher.safetensors"',
        ]
        if builtin
        else [
            f"model = {toml_value(teacher)}  # an open_clip model: zero-shot on class_names",
            f"pretrained = {toml_value(pretrained)}  # downloaded once when online, or a weights file",
            '# prompts = "runs/coop/coop_16shot.pt"  # CoOp prompts from `cdca cloud learn-prompts`',
        ]
    )
    arch = "resnet18" if size >= 96 else "compact_cnn"
    # each device walks through every corruption of the held-out test images
    per_domain = min(500, sum(max(1, round(TEST_SHARE * c)) for c in survey.counts))
    return "\n".join(
        [
            "# A cdca project (written by `cdca init`). Every cdca command reads this file when it",
            "# runs in this folder (or with --project). Relative paths are relative to this folder.",
            "# Every key and its default: docs/configuration.md, or `cdca config show`.",
            "",
            "[data]",
            f"train = {toml_value(survey.spec)}",
            'test = ""  # empty: hold test_share of each class out of train (never trained on)',
            f"test_share = {TEST_SHARE}",
            'shifted = "data/shifted"  # `cdca data prepare` corrupts the test images into this folder',
            f"image_size = {size}",
            f'resize = "{resize}"  # pad | crop | stretch | none (refuse other sizes)',
            "# One name per label, in label order: the teacher's captions and the device's outputs.",
            "# For an image folder this list also decides which folder gets which label.",
            f"class_names = {names}",
            "",
            "[teacher]",
            *teacher_lines,
            "",
            "[student]",
            f'arch = "{arch}"  # compact_cnn | mobilenet_v3_small | resnet18',
            'checkpoint = "models/student.safetensors"  # the distilled student the devices run',
            'label_trained = "models/student_label_trained.safetensors"  # an on-device reference',
            "",
            "[adaptation.device]",
            "budget = 0.1  # the largest share of frames a device uploads",
            "",
            "[adaptation.synthetic]",
            "count = 64  # training images rendered like each environment per cloud fit; 0: none",
            "",
            "[fleet]",
            "devices = 4",
            f"per_domain = {per_domain}  # frames per corruption per device (at most the test images)",
            "",
        ]
    )


def _report(survey: Survey, size: int, resize: str, target: Path) -> None:
    total = sum(survey.counts)
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in survey.sizes.most_common(3))
    print(f"{survey.spec}: {total} images, {len(survey.class_names)} classes, sizes {sizes}")
    print(f"  models take {size}x{size} px (resize: {resize})")
    for name, count in zip(survey.class_names, survey.counts, strict=True):
        if count < FEW_IMAGES:
            print(f"  warning: class {name!r} has only {count} images")
    print(f"wrote {target}. Next, in {target.parent}:")
    steps = [
        "cdca data prepare",
        "cdca train teacher",
        "cdca train student",
        "cdca cloud distill",
        "cdca bench adapt --methods source,bn_adapt,tent,uvpa",
        "cdca simulate",
        "cdca cloud serve",
    ]
    for step in steps:
        print(f"  {step}")
