"""Export ``DeviceModel`` to ONNX, write its manifest and defaults, check parity, quantise to int8.

Uses PyTorch's torch.export-based exporter (``dynamo=True``): on this graph the legacy
TorchScript exporter produced wrong numbers (the adaptation inputs reach the BatchNorm
replacements through module state, which tracing mis-folded), the new one matches
PyTorch to ~1e-5. Static QDQ int8 follows onnxruntime's advice for CNNs, calibrated on
real images *and* non-zero adaptation inputs, since prompts shift activation ranges.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cloud.distill.checkpoint import DistilledInfo
from cloud.distill.student import DistilledStudent
from cloud.export.device_model import DeviceModel
from cloud.export.held_graph import export_held_graph, held_parity
from protocol.errors import DataError
from protocol.manifest import (
    INT8_MANIFEST_FILE,
    MANIFEST_FILE,
    ModelManifest,
    Preprocess,
    TensorSpec,
    sha256_of,
)

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # fp32, on logits of magnitude up to the logit scale
DESCRIPTIONS = {
    "x": "normalised images (see preprocess)",
    "prompt": "additive pixel prompt, broadcast over the batch; zeros = none",
    "input_affine": "per-channel input transform x*(1+a)+b as [a; b]; zeros = identity",
    "norm_affine": "BatchNorm scale/shift adjustments [s; d]: gamma*(1+s), beta+d; zeros = source",
    "norm_stats": "reference statistics adjustments [dm; dv]: mean+dm, var*exp(dv); zeros = source",
    "stat_mix": "0 = reference statistics, 1 = current batch statistics (forward only)",
    "class_vectors": "teacher class vectors, one unit-norm row per class",
    "logits": "scaled cosine similarities to the class vectors",
    "embedding": "unit-norm image embedding in the teacher's space",
    "batch_stats": "mean and variance each BatchNorm saw in this batch [mean; var]",
}


@dataclass(frozen=True)
class ExportResult:
    """Paths written and the checks made."""

    model: Path
    manifest: Path
    defaults: Path
    parity_max_abs_diff: float
    seconds: float


def export_device_model(
    student: DistilledStudent,
    class_vectors: torch.Tensor,
    info: DistilledInfo,
    out_dir: Path,
    model_version: str = "1",
) -> ExportResult:
    """Write ``student.onnx``, ``student.defaults.npz`` and ``student.manifest.json`` into ``out_dir``."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    device_model = DeviceModel(student, for_export=True, image_size=info.image_size)
    example = device_model.neutral_inputs(class_vectors, batch=2)
    model_path = out_dir / "student.onnx"
    _export(device_model, example, model_path)
    defaults_path = out_dir / "student.defaults.npz"
    defaults = {k: v.numpy() for k, v in example.items() if k != "x"}
    np.savez(defaults_path, allow_pickle=False, **defaults)
    diff = parity_check(device_model, model_path, example)
    if diff > PARITY_TOLERANCE:
        raise DataError(
            f"ONNX export disagrees with PyTorch by {diff:.2e} (> {PARITY_TOLERANCE}); not written"
        )
    held = export_held_graph(student, device_model, example, out_dir)
    if held is not None:
        held_diff = held_parity(device_model, out_dir, held, example)
        if held_diff > PARITY_TOLERANCE:
            raise DataError(
                f"the held-statistics graph disagrees with the device graph by {held_diff:.2e}"
                f" (> {PARITY_TOLERANCE}); not written"
            )
    manifest = build_manifest(
        device_model, example, info, model_path, defaults_path, model_version, diff
    )
    manifest = replace(manifest, held=held)
    manifest_path = out_dir / MANIFEST_FILE
    manifest_path.write_text(manifest.to_json())
    return ExportResult(model_path, manifest_path, defaults_path, diff, time.perf_counter() - start)


def _export(model: DeviceModel, example: dict[str, torch.Tensor], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    classes = torch.export.Dim("num_classes", min=2, max=100_000)
    shapes: dict[str, dict[int, object] | None] = dict.fromkeys(DeviceModel.INPUTS)
    shapes.update({"x": {0: batch}, "class_vectors": {0: classes}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about opset and deprecated paths
        program = torch.onnx.export(
            model,
            tuple(example[k] for k in DeviceModel.INPUTS),
            dynamo=True,
            input_names=list(DeviceModel.INPUTS),
            output_names=list(DeviceModel.OUTPUTS),
            dynamic_shapes=shapes,
            verbose=False,
        )
    if program is None:
        raise DataError("torch.onnx.export returned no program")
    program.save(str(path))


def random_adaptation_inputs(
    example: dict[str, torch.Tensor], batch: int, seed: int
) -> dict[str, np.ndarray]:
    """Non-zero values for every adaptation input (parity checks and int8 calibration)."""
    rng = np.random.default_rng(seed)
    feeds = {k: v.numpy().copy() for k, v in example.items()}
    feeds["x"] = rng.normal(size=(batch, *feeds["x"].shape[1:])).astype(np.float32)
    for name in ("prompt", "input_affine", "norm_affine", "norm_stats"):
        feeds[name] = (0.1 * rng.normal(size=feeds[name].shape)).astype(np.float32)
    feeds["stat_mix"] = np.array([rng.uniform()], np.float32)
    return feeds


def parity_check(
    model: DeviceModel, path: Path, example: dict[str, torch.Tensor], trials: int = 3
) -> float:
    """Max |onnxruntime - torch| over logits and embeddings, for random non-zero inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for trial in range(trials):
        feeds = random_adaptation_inputs(example, batch=8 + trial, seed=trial)
        ort_out = session.run(list(DeviceModel.OUTPUTS), feeds)
        with torch.no_grad():
            torch_out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        for a, b in zip(ort_out, torch_out, strict=True):
            worst = max(worst, float(np.abs(a - b.numpy()).max()))
    return worst


def build_manifest(
    model: DeviceModel,
    example: dict[str, torch.Tensor],
    info: DistilledInfo,
    model_path: Path,
    defaults_path: Path,
    model_version: str,
    parity: float,
) -> ModelManifest:
    """The manifest for an exported fp32 model."""
    import onnx
    import onnxruntime

    inputs = tuple(
        TensorSpec(
            name,
            ("batch", *example[name].shape[1:])
            if name == "x"
            else (
                ("num_classes", example[name].shape[1])
                if name == "class_vectors"
                else tuple(example[name].shape)
            ),
            "float32",
            DESCRIPTIONS[name],
        )
        for name in DeviceModel.INPUTS
    )
    outputs = (
        TensorSpec("logits", ("batch", "num_classes"), "float32", DESCRIPTIONS["logits"]),
        TensorSpec("embedding", ("batch", info.embed_dim), "float32", DESCRIPTIONS["embedding"]),
        TensorSpec(
            "batch_stats", (2, model.num_norm_channels), "float32", DESCRIPTIONS["batch_stats"]
        ),
    )
    return ModelManifest(
        model_file=model_path.name,
        sha256=sha256_of(model_path),
        inputs=inputs,
        outputs=outputs,
        preprocess=Preprocess(info.image_size, info.normalization.mean, info.normalization.std),
        class_names=info.class_names,
        model_version=model_version,
        defaults_file=defaults_path.name,
        norm_layers=tuple(
            {"name": n.name, "offset": n.offset, "channels": n.channels} for n in model.norm_layers
        ),
        versions={
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "student": info.arch,
            "teacher": info.teacher,
        },
        parity={"max_abs_diff_vs_torch": parity},
    )


def quantize_int8(
    export: ExportResult,
    calibration_images: np.ndarray,
    manifest: ModelManifest,
    example: dict[str, torch.Tensor],
) -> tuple[Path, Path]:
    """Static QDQ int8 copy of an exported model's convolutions, calibrated with real images and prompts.

    Devices run it without onnxruntime's ``INT8_DISABLED_OPTIMIZERS`` (``protocol.manifest``).

    Args:
        export: the fp32 export.
        calibration_images: (N, 3, H, W) float32 normalised images.
        manifest: the fp32 manifest (copied with the new file, hash and quantisation).
        example: neutral inputs (shapes of the adaptation inputs).

    Returns:
        Paths of ``student.int8.onnx`` and ``student.int8.manifest.json``.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            batches = [
                calibration_images[i : i + 32] for i in range(0, len(calibration_images), 32)
            ]
            feeds = []
            for index, batch in enumerate(batches):
                # Alternate neutral and non-zero adaptation inputs so both ranges are covered.
                inputs = random_adaptation_inputs(example, len(batch), seed=100 + index)
                if index % 2 == 0:
                    inputs.update({k: v.numpy() for k, v in example.items() if k != "x"})
                inputs["x"] = batch.astype(np.float32)
                feeds.append(inputs)
            self._iter = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._iter, None)

    prepared = export.model.with_name("student.prep.onnx")
    # ORT's symbolic shape inference trips over the exporter's Expand nodes; ONNX's own is enough here.
    quant_pre_process(str(export.model), str(prepared), skip_symbolic_shape=True)
    int8_path = export.model.with_name("student.int8.onnx")
    # The quantizer warns (on the root logger) about every BatchNormalization whose scale and
    # shift come from the adaptation inputs: those stay float on purpose.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(prepared),
            str(int8_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # Convolutions only: they are the int8 kernels that pay. Quantising every op put
            # 164 Quantize and 198 Dequantize nodes around the BatchNorm arithmetic the
            # adaptation inputs feed (2.5x slower than fp32). uint8 activations with int8
            # weights: MLAS's fast path on x86; int8 activations measured 2x slower.
            op_types_to_quantize=["Conv"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        root.setLevel(level)
    prepared.unlink(missing_ok=True)
    int8_manifest = replace(  # the held graph is fp32: an int8 device runs its own every batch
        manifest,
        model_file=int8_path.name,
        sha256=sha256_of(int8_path),
        quantization="int8-qdq",
        held=None,
    )
    manifest_path = export.manifest.with_name(INT8_MANIFEST_FILE)
    manifest_path.write_text(int8_manifest.to_json())
    return int8_path, manifest_path
