"""``cdca cloud export``: the device model file, its manifest, parity and (optionally) int8."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cloud.project_cli import add_project_arguments, project_from_args
from protocol.config.data import DataConfig
from protocol.errors import DataError
from protocol.manifest import SAMPLE_FILE

DEFAULT_OUT = Path("runs/device-model")  # under the project's folder


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` under ``cdca cloud``."""
    export = sub.add_parser(
        "export",
        help="write the ONNX device model + manifest from the distilled student",
        description="Exports the project's distilled student (student.checkpoint) with its "
        "adaptation inputs (prompt, input affine, norm affine/statistics, statistics mix, class "
        "vectors), checks onnxruntime against PyTorch, writes the manifest (the model's SHA-256, "
        "preprocessing, class names) and, with --int8, a static QDQ int8 copy calibrated on "
        "data.train whose accuracy (data.test, data.shifted) and latency are compared with fp32. "
        "`cdca cloud serve` exports the same files itself; this is for shipping them by hand.",
        epilog="example: cdca cloud export --project cdca.toml --int8",
    )
    export.add_argument("--student", type=Path, help="student.checkpoint: the distilled student")
    export.add_argument(
        "--out", type=Path, help=f"output folder (default: {DEFAULT_OUT} in the project's folder)"
    )
    export.add_argument("--model-version", default="1")
    export.add_argument("--int8", action="store_true", help="also write a static int8 (QDQ) model")
    export.add_argument(
        "--calibration-images",
        type=int,
        default=512,
        help="training images int8 is calibrated on (default: %(default)s)",
    )
    export.add_argument(
        "--sample",
        type=int,
        default=256,
        help="labelled data.test images written beside the model for `cdca device bench` "
        "to score (0: none; default: %(default)s)",
    )
    export.add_argument(
        "--num-test",
        type=int,
        default=2000,
        help="test images of the int8 check (default: %(default)s)",
    )
    add_project_arguments(export)
    export.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Export, check, optionally quantise; print sizes, parity, latency and accuracy."""
    from cloud.data.splits import load_split
    from cloud.distill.checkpoint import load_distilled
    from cloud.export.device_model import DeviceModel
    from cloud.export.onnx_export import export_device_model, quantize_int8
    from cloud.shipped import distilled_student
    from protocol.manifest import load_manifest

    project = project_from_args(args, {"student.checkpoint": args.student})
    args.out = args.out or project.root / DEFAULT_OUT
    student, vectors, info = load_distilled(distilled_student(project))
    result = export_device_model(student, vectors, info, args.out, args.model_version)
    report: dict[str, object] = {
        "fp32": {
            "file": str(result.model),
            "bytes": result.model.stat().st_size,
            "parity_max_abs_diff": result.parity_max_abs_diff,
            "export_seconds": round(result.seconds, 1),
        },
    }
    sample = write_sample(project.data, args.out, args.sample)
    if sample is not None:
        report["sample"] = {"file": str(sample[0]), "images": sample[1]}
    if args.int8:
        test = load_split(project.data, "test").take(args.num_test)
        train = load_split(project.data, "train", args.calibration_images)
        norm = info.normalization
        calibration = norm.to_tensor(train.images).numpy()
        example = DeviceModel(student, image_size=info.image_size).neutral_inputs(vectors, batch=2)
        manifest = load_manifest(result.manifest)
        int8_path, int8_manifest = quantize_int8(result, calibration, manifest, example)
        shifted = _shifted(project.data.shifted, args.num_test // 10)
        raw_sets = {"clean": (test.images, test.labels), **shifted}
        # Normalised once, then shared by the PyTorch, fp32 and int8 measurements.
        eval_sets = {
            name: (norm.to_tensor(images).numpy(), labels)
            for name, (images, labels) in raw_sets.items()
        }
        report["torch"] = _torch_accuracy(student, vectors, eval_sets)
        for name, path, described in (
            ("fp32", result.model, manifest),
            ("int8", int8_path, load_manifest(int8_manifest)),
        ):
            entry = report.setdefault(name, {})
            assert isinstance(entry, dict)
            entry.update(_measure(path, example, eval_sets, described.disabled_optimizers))
            entry["bytes"] = path.stat().st_size
    (args.out / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {result.model}, {result.manifest} and {args.out / 'export_report.json'}")
    return 0


def write_sample(data: DataConfig, folder: Path, count: int) -> tuple[Path, int] | None:
    """A class-mixed random draw of ``count`` labelled test images, for ``cdca device bench``.

    Returns the file and the images in it (fewer than ``count`` when the test set is smaller).

    Held-out images at the model's input size, so a device can check the accuracy of the
    model it runs (fp32 against int8, one provider against another) without the dataset.
    """
    from cloud.data.splits import load_split

    if count < 1:
        return None
    try:
        test = load_split(data, "test")
    except DataError as error:
        print(f"no sample for `cdca device bench` written: {error}")
        return None
    pick = np.sort(np.random.default_rng(0).permutation(len(test.images))[:count])
    path = folder / SAMPLE_FILE
    np.savez_compressed(
        path,
        images=test.images[pick],
        labels=test.labels[pick],
        class_names=np.array(test.class_names),
    )
    return path, len(pick)


def _torch_accuracy(student, vectors, eval_sets) -> dict[str, object]:  # type: ignore[no-untyped-def]
    import torch

    out: dict[str, object] = {}
    with torch.no_grad():
        for name, (images, labels) in eval_sets.items():
            x = torch.from_numpy(images)
            preds = torch.cat(
                [student(x[i : i + 256], vectors).argmax(1) for i in range(0, len(x), 256)]
            )
            out[f"accuracy_{name}"] = round(float((preds.numpy() == labels).mean()), 4)
    return out


def _shifted(data: str, count: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from cloud.data.corruptions import TEST_CORRUPTIONS
    from cloud.data.formats import open_benchmark

    if not Path(data.partition(":")[2] or data).is_dir() or count < 1:
        return {}
    bench = open_benchmark(data)
    present = [c for c in TEST_CORRUPTIONS if c in bench.corruptions()]
    loaded = [bench.load(c, 5, min(count, bench.count(c))) for c in present]
    if not loaded:
        return {}
    return {
        "severity5": (
            np.concatenate([d.images for d in loaded]),
            np.concatenate([d.labels for d in loaded]),
        )
    }


def _measure(path: Path, example, eval_sets, disabled: list[str]) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Accuracy as shipped and as an adapting device runs it (own batch statistics), latency."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(path), providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )
    neutral = {k: v.numpy() for k, v in example.items() if k != "x"}
    adapting = {**neutral, "stat_mix": np.ones_like(neutral["stat_mix"])}
    out: dict[str, object] = {}
    for name, (x, labels) in eval_sets.items():
        for mode, inputs in (("", neutral), ("_own_statistics", adapting)):
            preds = np.concatenate(
                [
                    session.run(["logits"], {**inputs, "x": x[i : i + 64]})[0].argmax(1)
                    for i in range(0, len(x), 64)
                ]
            )
            out[f"accuracy_{name}{mode}"] = round(float((preds == labels).mean()), 4)
    x1 = eval_sets["clean"][0][:64]
    for batch in (1, 64):
        feeds = {**neutral, "x": x1[:batch]}
        session.run(["logits"], feeds)
        start = time.perf_counter()
        repeats = 50 if batch == 1 else 10
        for _ in range(repeats):
            session.run(["logits"], feeds)
        out[f"ms_per_image_batch{batch}"] = round(
            (time.perf_counter() - start) / repeats / batch * 1e3, 4
        )
    return out
