"""``cdca bench perf``: what cdca costs, as ratios measured in one run on this machine.

- device: onnxruntime latency and throughput of the exported student with a learned prompt
  in force vs the plain student graph without any adaptation inputs (the prompt's
  overhead), and vs a graph that normalises with each batch's statistics like the device
  but takes no prompt (the prompt's own share of it), fp32 vs int8, onnxruntime vs
  PyTorch eager; a whole device step with the prompt gate on vs off (the gate's second
  pass); peak memory of a device process;
- cloud: one VPLU update on a full upload buffer, how it grows with the buffer, and the
  cost per device update as the fleet grows (1 to 256 devices), one device at a time
  against batched (``simulations.bench.fleet_cost``);
- communication: uplink bytes per 1,000 frames of U-VPA vs uploading every frame for the
  teacher to answer (cloud inference), from real upload messages.

Every number is a median over repeats; the hardware is named in the report.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud.students.preprocess import pixels_from_uint8
from protocol.config.adaptation import DeviceSettings
from protocol.config.wire import OLDER_CLOUD_ENCODING
from protocol.images import UploadEncoding
from protocol.manifest import load_manifest


@dataclass(frozen=True)
class PerfConfig:
    """What ``cdca bench perf`` measures and how long it tries."""

    data: str
    out: Path
    devices: tuple[int, ...] = (1, 4, 16, 64, 256)
    buffers: tuple[int, ...] = (48, 96, 192, 384)
    repeats: int = 5


def median_ms(fn: Callable[[], object], repeats: int, inner: int = 1) -> float:
    """Median wall time of ``fn`` in milliseconds (one warm-up call first)."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner * 1e3)
    return float(np.median(samples))


def hardware() -> dict[str, object]:
    """The machine the numbers belong to."""
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _ort_version(),
        "gpu": torch.cuda.is_available(),
    }


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def export_models(out: Path) -> dict[str, Path]:
    """The shipped student as the device runs it (fp32, int8) and as graphs without prompt inputs.

    ``plain`` uses running statistics (its BatchNorms fold away); ``batch_stats``
    normalises with each batch's statistics, as the device does.
    """
    from cloud.data.fashion_mnist import load_fashion_mnist
    from cloud.distill.checkpoint import load_distilled
    from cloud.export.device_model import DeviceModel
    from cloud.export.onnx_export import export_device_model, quantize_int8
    from cloud.shipped import SHIPPED_DISTILLED
    from protocol.manifest import load_manifest
    from simulations.peers.student import ClassVectorHead

    student, vectors, info = load_distilled(SHIPPED_DISTILLED)
    folder = out / "model"
    result = export_device_model(student, vectors, info, folder)
    train = load_fashion_mnist("train").take(256)
    calibration = info.normalization.to_tensor(train.images).numpy()
    example = DeviceModel(student).neutral_inputs(vectors, batch=2)
    int8, int8_manifest = quantize_int8(
        result, calibration, load_manifest(result.manifest), example
    )
    graphs = {
        "plain": ClassVectorHead(student, vectors).eval(),
        "batch_stats": ClassVectorHead(batch_statistics_copy(student), vectors).eval(),
    }
    paths = {name: folder / f"student.{name}.onnx" for name in graphs}
    for name, head in graphs.items():
        _export_images_to_logits(head, example["x"], paths[name])
    return {
        "manifest": result.manifest,
        "int8_manifest": int8_manifest,
        "fp32": result.model,
        "int8": int8,
        **paths,
    }


def batch_statistics_copy(student: torch.nn.Module) -> torch.nn.Module:
    """The student normalising with each batch's statistics (what the device does), no prompt inputs."""
    from simulations.peers.base import use_batch_statistics

    adaptive = copy.deepcopy(student)
    use_batch_statistics(adaptive)
    return adaptive.eval()  # without running statistics, eval mode still uses the batch's


def _export_images_to_logits(head: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about opsets
        program = torch.onnx.export(
            head,
            (x,),
            dynamo=True,
            input_names=["x"],
            verbose=False,
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
        )
    assert program is not None
    program.save(str(path))


def device_latency(models: dict[str, Path], frames: np.ndarray, repeats: int) -> dict[str, float]:
    """Ms per frame at batch 1 and 64: each graph (prompted fp32/int8, plain, batch stats), eager."""
    import onnxruntime as ort

    from cloud.distill.checkpoint import load_distilled
    from cloud.export.device_model import DeviceModel
    from cloud.shipped import SHIPPED_DISTILLED
    from device.preprocess import preprocess
    from device.runtime import DeviceRuntime

    runtime = DeviceRuntime.load(models["manifest"], threads=1)
    learned = {k: v + np.float32(0.01) for k, v in runtime.defaults.items() if k == "norm_affine"}
    prompt = {**runtime.defaults, **learned, "stat_mix": np.ones(1, np.float32)}
    x = preprocess(frames, runtime.manifest.preprocess)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {  # the prompted models opened as a device opens them (``DeviceRuntime``)
        "fp32": runtime.session,
        "int8": DeviceRuntime.load(models["int8_manifest"], threads=1).session,
    }
    sessions.update(
        {
            name: ort.InferenceSession(
                str(models[name]), options, providers=["CPUExecutionProvider"]
            )
            for name in ("plain", "batch_stats")
        }
    )
    student, vectors, _ = load_distilled(SHIPPED_DISTILLED)
    eager = DeviceModel(student).eval()
    torch_inputs = {k: torch.from_numpy(v) for k, v in prompt.items()}
    out: dict[str, float] = {}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same single core onnxruntime gets
    try:
        for n in (1, 64):
            inner = 20 if n == 1 else 2
            feeds = {**prompt, "x": x[:n]}
            for name in ("plain", "batch_stats"):
                unprompted = partial(sessions[name].run, None, {"x": x[:n]})
                out[f"{name}_ms_per_frame_b{n}"] = median_ms(unprompted, repeats, inner) / n
            for name in ("fp32", "int8"):
                prompted = partial(sessions[name].run, None, feeds)
                out[f"prompted_{name}_ms_per_frame_b{n}"] = median_ms(prompted, repeats, inner) / n
            with torch.no_grad():
                forward = partial(eager, **{**torch_inputs, "x": torch.from_numpy(x[:n])})
                out[f"torch_eager_ms_per_frame_b{n}"] = median_ms(forward, repeats, inner) / n
    finally:
        torch.set_num_threads(torch_threads)
    return {k: round(v, 4) for k, v in out.items()}


def step_cost(manifest: Path, frames: np.ndarray, repeats: int) -> dict[str, float]:
    """Ms per frame of one whole device step (model, prompt gate, UGS) with a prompt in force.

    Over 16 batches under a prompt that wins its checks: the step as the project ships it
    (``default``: held statistics, ``stats_every`` batches apart, the gate on a quarter of
    the batches between) and without the gate (``default_gate_off``), and with statistics
    computed on every batch (``stats_every = 1``) with the prompt gate (``gate_entropy``:
    the batch runs twice while a prompt is in force and unchecked, ``device.prompt_gate``)
    and without it (``gate_off``).
    """
    from device.agent import DeviceAgent
    from device.runtime import DeviceRuntime
    from protocol.config.adaptation import DeviceSettings

    every_batch = replace(DeviceSettings(), stats_every=1)
    configurations = {
        "gate_off": replace(every_batch, gate="off"),
        "gate_entropy": replace(every_batch, gate="entropy"),
        "default": DeviceSettings(),
        "default_gate_off": replace(DeviceSettings(), gate="off"),
    }
    out = {}
    block = 16
    for name, settings in configurations.items():
        agent = DeviceAgent(DeviceRuntime.load(manifest, threads=1), settings)
        sharper = agent.runtime.defaults["class_vectors"] * np.float32(1.5)  # a surer answer
        agent.apply({"class_vectors": sharper})

        def steps(agent: DeviceAgent = agent) -> None:
            for _ in range(block):
                agent.step(frames)

        ms = median_ms(steps, repeats) / block
        out[f"agent_step_{name}_ms_per_frame_b{len(frames)}"] = ms / len(frames)
    return {k: round(v, 4) for k, v in out.items()}


DEVICE_PROCESS = """
import sys, numpy as np
from device.runtime import DeviceRuntime
from device.agent import DeviceAgent
agent = DeviceAgent(DeviceRuntime.load(sys.argv[1], threads=1))
frames = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
for _ in range(100):
    agent.step(frames)
status = open('/proc/self/status').read().splitlines()
print(next(int(l.split()[1]) for l in status if l.startswith('VmHWM:')) / 1024)
"""


def device_peak_memory_mb(manifest: Path) -> float | None:
    """Peak resident memory of a process running only the device side (no torch), in MiB."""
    if not Path("/proc/self/status").exists():
        return None
    result = subprocess.run(
        [sys.executable, "-c", DEVICE_PROCESS, str(manifest)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return round(float(result.stdout.strip().splitlines()[-1]), 1)


def cloud_costs(
    config: PerfConfig, pixels: torch.Tensor, progress: Callable[[str], None] = print
) -> dict[str, object]:
    """One VPLU update vs buffer size; cost per device update vs fleet size (``fleet_cost``)."""
    from cloud.adaptation.vplu import VPLU, Uploads
    from cloud.server.models import load_cloud_models
    from protocol.config.project import load_project
    from simulations.bench.fleet_cost import fleet_cost_curve, pass_cost_curve

    project = load_project(None)  # the built-in project with the default settings
    cloud_models = load_cloud_models(project, config.out / "cloud")
    normalize = cloud_models.normalization.apply
    vplu = VPLU(cloud_models.device_model, cloud_models.class_vectors, project.adaptation.fit)
    inputs = cloud_models.device_model.neutral_inputs(cloud_models.class_vectors, batch=len(pixels))
    with torch.no_grad():
        _, _, stats = cloud_models.device_model(
            **{**inputs, "x": normalize(pixels), "stat_mix": torch.ones(1)}
        )
        teacher = cloud_models.teacher_logits(pixels)
    update_ms = {}
    for size in config.buffers:
        uploads = Uploads(normalize(pixels[:size]), stats, torch.rand(size), teacher[:size])
        update_ms[size] = round(
            median_ms(partial(vplu.update, uploads, vplu.neutral), config.repeats), 1
        )
    curve = fleet_cost_curve(cloud_models, pixels, stats, config.devices, progress)
    return {
        "vplu_update_ms_by_buffer": update_ms,
        "fit_pass_us_per_sample_by_size": pass_cost_curve(cloud_models, pixels),
        "fleet_cost_by_devices": curve,
    }


ENCODINGS = {  # the uplink measured in each; the ratio's target applies to the project's default
    "raw": OLDER_CLOUD_ENCODING,  # raw pixels, float32 statistics with every upload
    "png": UploadEncoding("png"),
    "webp90": UploadEncoding("webp", 90),
    "webp75": UploadEncoding("webp", 75),
}


def communication(
    manifest: Path, images: np.ndarray, settings: DeviceSettings | None = None
) -> dict[str, float]:
    """Uplink and downlink bytes per 1,000 frames: U-VPA's uploads vs every frame to the cloud.

    Both sides in the same encoding (``ENCODINGS``); ``uplink_ratio`` is the project's own
    (``[adaptation.device]`` image_format, image_quality, stats_dtype).
    """
    settings = settings or DeviceSettings()
    encodings = {**ENCODINGS, "default": settings.encoding}
    out: dict[str, float] = {}
    for name, encoding in encodings.items():
        uvpa_up, everything_up = uplink_bytes(manifest, images, settings, encoding)
        per_k = 1000 / len(images)
        suffix = "" if name == "default" else f"_{name}"
        out[f"uvpa_bytes_up_per_1000{suffix}"] = round(uvpa_up * per_k)
        out[f"cloud_inference_bytes_up_per_1000{suffix}"] = round(everything_up * per_k)
        out[f"uplink_ratio{suffix}"] = round(uvpa_up / everything_up, 4)
    classes = len(load_manifest(manifest).class_names)
    out["cloud_inference_bytes_down_per_1000"] = round(4 * classes * 1000)
    return out


def uplink_bytes(
    manifest: Path, images: np.ndarray, settings: DeviceSettings, encoding: UploadEncoding
) -> tuple[int, int]:
    """Wire bytes of U-VPA's uploads and of sending every frame (cloud inference: no statistics)."""
    from device.agent import DeviceAgent
    from device.replay import step_and_upload
    from device.runtime import DeviceRuntime
    from device.stats_sender import StatsSender
    from simulations.bench.cloud_device import every_frame_bytes

    settings = replace(
        settings,
        image_format=encoding.image_format,
        image_quality=encoding.image_quality,
        stats_dtype=encoding.stats_dtype,
        stats_resend_distance=encoding.stats_resend_distance,
    )
    agent = DeviceAgent(DeviceRuntime.load(manifest, threads=1), settings)
    sender = StatsSender(encoding.stats_resend_distance)
    uvpa_up = everything_up = 0
    for start in range(0, len(images), 64):
        batch = images[start : start + 64]
        step, _, sent = step_and_upload(agent, "perf", batch, start // 64, start, sender)
        uvpa_up += sent
        every = start + np.arange(len(batch))
        everything_up += every_frame_bytes(
            "perf", start // 64, batch, every, start + len(batch), encoding
        )
    return uvpa_up, everything_up


def run_perf(config: PerfConfig, progress: Callable[[str], None] = print) -> dict[str, object]:
    """Everything above; writes ``perf.json``, ``perf.md`` and ``perf.png`` into ``config.out``."""
    from cloud.data.formats import open_benchmark

    config.out.mkdir(parents=True, exist_ok=True)
    progress("exporting the student (fp32, int8, plain graph)")
    models = export_models(config.out)
    dataset = open_benchmark(config.data)
    fog, contrast = dataset.load("fog", 5, 500), dataset.load("contrast", 5, 500)
    frames = np.concatenate([fog.images, contrast.images])
    progress("device latency")
    device = device_latency(models, frames[:64], config.repeats)
    device.update(step_cost(models["manifest"], frames[:64], config.repeats))
    device["peak_memory_mb"] = device_peak_memory_mb(models["manifest"])  # type: ignore[assignment]
    progress("communication")
    traffic = communication(models["manifest"], frames)
    progress("cloud: VPLU updates and fleet rounds")
    pixels = pixels_from_uint8(np.concatenate([fog.images[:192], contrast.images[:192]]))
    cloud = cloud_costs(config, pixels, progress)
    results = {
        "hardware": hardware(),
        "device": device,
        "cloud": cloud,
        "communication": traffic,
        "ratios": ratios(device, traffic, cloud),
    }
    (config.out / "perf.json").write_text(json.dumps(results, indent=2) + "\n")
    (config.out / "perf.md").write_text(markdown(results))
    plot(results, config.out / "perf.png")
    return results


def ratios(
    device: dict[str, float], traffic: dict[str, float], cloud: dict[str, Any]
) -> dict[str, float]:
    """The figures the targets are about."""
    out = {}
    curve = cloud["fleet_cost_by_devices"]
    if "1" in curve and "64" in curve:  # batched cost per device at 64 over one device's
        one = curve["1"]["one_at_a_time_ms_per_device"]
        out["batched_per_device_64_over_one_device"] = round(
            curve["64"]["batched_ms_per_device"] / one, 3
        )
    for n in (1, 64):
        plain, prompted = (
            device[f"plain_ms_per_frame_b{n}"],
            device[f"prompted_fp32_ms_per_frame_b{n}"],
        )
        out[f"prompt_overhead_b{n}"] = round(prompted / plain - 1, 4)
        # the same, against the graph that normalises like the device but takes no prompt
        batch_stats = device[f"batch_stats_ms_per_frame_b{n}"]
        out[f"prompt_overhead_over_batch_stats_b{n}"] = round(prompted / batch_stats - 1, 4)
        out[f"ort_speedup_over_torch_b{n}"] = round(
            device[f"torch_eager_ms_per_frame_b{n}"] / prompted, 2
        )
        out[f"int8_speedup_over_fp32_b{n}"] = round(
            prompted / device[f"prompted_int8_ms_per_frame_b{n}"], 2
        )
    gate_on, gate_off, default = (
        device.get(f"agent_step_{g}_ms_per_frame_b64")
        for g in ("gate_entropy", "gate_off", "default")
    )
    if gate_on and gate_off and default:
        plain = device["plain_ms_per_frame_b64"]
        # what the prompt gate adds to a step that computes statistics on every batch
        out["prompt_gate_overhead_b64"] = round(gate_on / gate_off - 1, 4)
        # what held statistics (the default) save on the step with statistics every batch
        out["held_statistics_speedup_b64"] = round(gate_on / default, 2)
        # the whole adapting step as shipped against the plain student's forward
        out["device_step_over_plain_b64"] = round(default / plain, 2)
    default_gate_off = device.get("agent_step_default_gate_off_ms_per_frame_b64")
    if default_gate_off:  # where the step would be without the gate's second look
        out["device_step_gate_off_over_plain_b64"] = round(
            default_gate_off / device["plain_ms_per_frame_b64"], 2
        )
    out["uplink_ratio"] = traffic["uplink_ratio"]
    return out


TARGETS = {
    "batched_per_device_64_over_one_device": ("<=", 0.25),
    "prompt_overhead_b64": ("<", 0.05),
    "ort_speedup_over_torch_b1": (">=", 2.0),
    "int8_speedup_over_fp32_b1": (">=", 1.3),
    "int8_speedup_over_fp32_b64": (">=", 1.3),
    "device_step_over_plain_b64": ("<=", 1.5),
    "uplink_ratio": ("<=", 0.05),
}


def _meets(value: float, relation: str, bound: float) -> bool:
    return {"<": value < bound, "<=": value <= bound, ">=": value >= bound}[relation]


def markdown(results: dict[str, Any]) -> str:
    """The report: hardware, ratios against targets, then every absolute number."""
    hw, r = results["hardware"], results["ratios"]
    lines = [
        "# Performance (`cdca bench perf`)",
        "",
        f"Hardware: {hw['cpu']}, {hw['cores']} cores, "
        f"GPU: {hw['gpu']}; torch {hw['torch']}, onnxruntime {hw['onnxruntime']}; device inference "
        "on 1 thread.",
        "",
        "| ratio | value | target | met |",
        "|---|---|---|---|",
    ]
    for key, value in r.items():
        target = TARGETS.get(key)
        met = "" if target is None else ("yes" if _meets(value, *target) else "**no**")
        lines.append(
            f"| {key} | {value} | {'' if target is None else ' '.join(map(str, target))} | {met} |"
        )
    for section in ("device", "communication"):
        lines += ["", f"## {section}", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in results[section].items()]
    cloud = results["cloud"]
    lines += ["", "## cloud", "", "| uploads in the buffer | one VPLU update (ms) |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in cloud["vplu_update_ms_by_buffer"].items()]
    lines += ["", "| samples in one fit pass | forward and backward, us per sample |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in cloud["fit_pass_us_per_sample_by_size"].items()]
    lines += [
        "",
        "| devices | ms per device update, one at a time | batched | process RSS (MiB) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['one_at_a_time_ms_per_device']} | {v['batched_ms_per_device']} "
        f"| {v['process_rss_mb']} |"
        for k, v in cloud["fleet_cost_by_devices"].items()
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Cloud cost curves: update time vs buffer; ms per device update vs fleet size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cloud = results["cloud"]
    buffers = cloud["vplu_update_ms_by_buffer"]
    curve = cloud["fleet_cost_by_devices"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.plot(list(map(int, buffers)), list(buffers.values()), marker="o")
    a.set_xlabel("uploads in the buffer")
    a.set_ylabel("one VPLU update (ms)")
    counts = list(map(int, curve))
    for key, label in (("one_at_a_time", "one at a time"), ("batched", "batched")):
        b.plot(counts, [v[f"{key}_ms_per_device"] for v in curve.values()], marker="o", label=label)
    b.set_xscale("log", base=2)
    b.set_ylim(bottom=0)
    b.set_xlabel("devices in the fleet")
    b.set_ylabel("cloud ms per device update")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
