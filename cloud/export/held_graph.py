"""Export the held-statistics graph: the student with its BatchNorm parameters in a data file.

A device that normalises with statistics it holds (``[adaptation.device] stats_every``)
needs no batch statistics on most batches, and computing them is what makes the device
graph cost 1.7x the plain student (reductions over every BatchNorm input, and layout
changes around BatchNorms whose parameters are runtime inputs). This graph takes only
``x``, ``prompt``, ``input_affine`` and ``class_vectors``; every BatchNorm's weight, bias,
mean and variance are initializers stored in ``student.held.bin``, which the device
replaces when it opens a session (onnxruntime's ``add_external_initializers``), so
onnxruntime folds them into the convolutions as it folds the plain student's.

Any student whose BatchNorms the exporter keeps as ``BatchNormalization`` nodes works;
one it cannot map gets no held graph (its devices run the device graph on every batch).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cloud.distill.student import DistilledStudent
from cloud.export.device_model import DeviceModel, eval_copy, transform_input
from protocol.errors import DataError
from protocol.held_graph import HELD_INPUTS, held_initializers, prompted_affine, read_held_data
from protocol.manifest import HeldGraph, sha256_of

logger = logging.getLogger(__name__)

HELD_MODEL_FILE = "student.held.onnx"
HELD_DATA_FILE = "student.held.bin"
PREFIX = "student."  # the head's attribute: initializer names are PREFIX + module path


class HeldStatisticsHead(nn.Module):
    """(x, prompt, input_affine, class_vectors) -> (logits, embedding) with eval BatchNorms."""

    def __init__(self, student: DistilledStudent) -> None:
        super().__init__()
        self.student = eval_copy(student)

    def forward(
        self,
        x: torch.Tensor,
        prompt: torch.Tensor,
        input_affine: torch.Tensor,
        class_vectors: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The device model's input transform, then the student with its own BatchNorms."""
        embedding = self.student.embed(transform_input(x, prompt, input_affine))
        return self.student.logit_scale * embedding @ class_vectors.T, embedding


def export_held_graph(
    student: DistilledStudent,
    device_model: DeviceModel,
    example: dict[str, torch.Tensor],
    out_dir: Path,
) -> HeldGraph | None:
    """Write ``student.held.onnx`` and ``student.held.bin``; None when the student does not map.

    ``example``: the device model's neutral inputs (shapes of x, prompt, class vectors).
    """
    try:
        return _export(student, device_model, example, out_dir)
    except DataError as err:
        logger.warning("no held-statistics graph (devices compute statistics every batch): %s", err)
        for name in (HELD_MODEL_FILE, HELD_DATA_FILE):
            (out_dir / name).unlink(missing_ok=True)
        return None


def _export(
    student: DistilledStudent,
    device_model: DeviceModel,
    example: dict[str, torch.Tensor],
    out_dir: Path,
) -> HeldGraph:
    import onnx
    import onnx_ir as ir
    from onnxscript import optimizer

    head = HeldStatisticsHead(student)
    batch = torch.export.Dim("batch", min=1, max=4096)
    classes = torch.export.Dim("num_classes", min=2, max=100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about opsets
        program = torch.onnx.export(
            head,
            tuple(example[name] for name in HELD_INPUTS),
            dynamo=True,
            input_names=list(HELD_INPUTS),
            output_names=["logits", "embedding"],
            dynamic_shapes={
                "x": {0: batch},
                "prompt": None,
                "input_affine": None,
                "class_vectors": {0: classes},
            },
            optimize=False,  # the default optimiser folds the BatchNorms into the convolutions
            verbose=False,
        )
    if program is None:
        raise DataError("torch.onnx.export returned no program")
    model = program.model
    optimizer.fold_constants(model)  # shapes and casts only: BatchNorm folding is a rewrite rule
    optimizer.remove_unused_nodes(model)
    proto = ir.serde.serialize_model(model)
    layers = _norm_initializers(proto, device_model)
    data_path = out_dir / HELD_DATA_FILE
    _move_to_data_file(proto, layers, data_path)
    model_path = out_dir / HELD_MODEL_FILE
    onnx.save_model(proto, str(model_path))
    return HeldGraph(
        model_file=model_path.name,
        sha256=sha256_of(model_path),
        data_file=data_path.name,
        data_sha256=sha256_of(data_path),
        layers=layers,
    )


def _norm_initializers(
    proto: object, device_model: DeviceModel
) -> tuple[tuple[str, str, str, str], ...]:
    """Each norm layer's (weight, bias, mean, var) initializer names, in ``norm_layers`` order."""
    found: dict[str, tuple[str, str, str, str]] = {}
    for node in proto.graph.node:  # type: ignore[attr-defined]
        if node.op_type == "BatchNormalization":
            weight, bias, mean, var = node.input[1:5]
            names = (weight, bias, mean, var)
            owner = names[0].removeprefix(PREFIX).rsplit(".", 1)[0]
            found[owner] = names
    layers = []
    for layer in device_model.norm_layers:
        if layer.name not in found:
            raise DataError(f"BatchNorm {layer.name} has no BatchNormalization node in the graph")
        layers.append(found.pop(layer.name))
    if found:
        raise DataError(f"BatchNormalization nodes that are no norm layer: {sorted(found)}")
    return tuple(layers)


def _move_to_data_file(proto: object, layers: tuple[tuple[str, ...], ...], data_path: Path) -> None:
    """Store the norm initializers in ``data_path`` (float32, layer by layer) and point to it."""
    from onnx import TensorProto, numpy_helper
    from onnx.external_data_helper import set_external_data

    tensors = {t.name: t for t in proto.graph.initializer}  # type: ignore[attr-defined]
    offset = 0
    with open(data_path, "wb") as handle:
        for names in layers:
            for name in names:
                tensor = tensors.get(name)
                if tensor is None or tensor.data_type != TensorProto.FLOAT:
                    raise DataError(f"{name} is not a float32 initializer")
                data = numpy_helper.to_array(tensor).astype("<f4").tobytes()
                handle.write(data)
                set_external_data(tensor, data_path.name, offset, len(data))
                tensor.ClearField("raw_data")
                tensor.ClearField("float_data")
                tensor.data_location = TensorProto.EXTERNAL
                offset += len(data)


def held_parity(
    device_model: DeviceModel, out_dir: Path, held: HeldGraph, example: dict[str, torch.Tensor]
) -> float:
    """Max |held graph - device graph| on logits, for random prompts and held statistics.

    The device graph replays the statistics through ``norm_stats`` (reference statistics
    only), which is what the held graph computes with the statistics in its initializers.
    """
    import onnxruntime as ort

    from cloud.export.onnx_export import random_adaptation_inputs

    slices = [(layer.offset, layer.channels) for layer in device_model.norm_layers]
    weight, bias, mean, var = read_held_data(out_dir / held.data_file, slices)
    worst = 0.0
    for trial in range(2):
        feeds = random_adaptation_inputs(example, batch=6 + trial, seed=50 + trial)
        affine, deltas = feeds["norm_affine"], feeds["norm_stats"]
        replaced = np.concatenate(
            [prompted_affine(weight, bias, affine), [mean + deltas[0], var * np.exp(deltas[1])]]
        )
        values = held_initializers(held, slices, replaced)
        options = ort.SessionOptions()
        ort_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in values.values()]
        options.add_external_initializers(list(values), ort_values)
        session = ort.InferenceSession(
            str(out_dir / held.model_file), options, providers=["CPUExecutionProvider"]
        )
        held_logits = session.run(["logits"], {k: feeds[k] for k in HELD_INPUTS})[0]
        with torch.no_grad():
            torch_inputs = {k: torch.from_numpy(v) for k, v in feeds.items() if k != "stat_mix"}
            reference = device_model.replayed_logits(**torch_inputs).numpy()
        worst = max(worst, float(np.abs(held_logits - reference).max()))
    return worst
