"""``cdca bench reliability``: many device clients against one real server, and what it holds.

A real ``cdca cloud serve`` process on loopback; ``clients`` devices enrolled in its
registry, each a thread with its own channel that registers, uploads a batch of frames every
``period`` seconds within its budget (a 64-frame batch: 64 / ``period`` frames per second),
holds back while the cloud asks it to (back-pressure), and keeps a ``WatchPrompts`` stream
open. Reported: prompt staleness (the device's batches since the one a prompt learned from,
when it arrives), devices that received prompts and the fewest any received,
RPCs that failed (none is deliberate here, so every failure counts), upload latency p50/p99,
prompt delivery latency (publication to receipt) p50/p99, prompts received, the server's
peak resident memory, and the upload backlog left in its inbox. Then the fault scenarios
of ``simulations/bench/faults.py`` (killed and stalled processes, an overflowing queue, a
Flower straggler, one hostile device among honest ones: ``simulations/bench/hostile.py``),
each in a fresh folder. Hostile input is also fuzzed by the test suite
(tests/system/test_fuzz.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from protocol.messages import PROTOCOL_VERSION, call_metadata, upload_chunks
from protocol.v1 import cdca_pb2, cdca_pb2_grpc


@dataclass(frozen=True)
class LoadConfig:
    """How hard and how long."""

    out: Path
    clients: int = 64
    seconds: float = 60.0
    period: float = 1.0  # seconds between one client's uploads
    samples: int = 6  # frames per upload (a 64-frame batch at a 10 % budget)
    server_settings: list[str] = field(default_factory=list)  # KEY=VALUE for the server


@dataclass
class ClientStats:
    """One client's counters."""

    uploads: int = 0
    held_back: int = 0  # batches not uploaded: the cloud asked this device to hold back
    batch: int = 0  # the device's current batch
    failures: list[str] = field(default_factory=list)
    upload_ms: list[float] = field(default_factory=list)
    delivery_ms: list[float] = field(default_factory=list)
    # per prompt: the device's batches since the one the prompt learned from, at receipt
    staleness: list[int] = field(default_factory=list)


def run_load(config: LoadConfig) -> dict[str, object]:
    """Start a server, drive it with ``clients`` threads, stop it; returns the numbers."""
    from cloud.server.registry import DeviceRegistry
    from cloud.server.serve import registry_path
    from protocol.manifest import MANIFEST_FILE, load_manifest
    from simulations.harness.processes import launch_server

    state = config.out / "cloud"
    shutil.rmtree(state, ignore_errors=True)  # a previous run's backlog would be re-queued
    state.mkdir(parents=True)
    registry = DeviceRegistry(registry_path(state))
    tokens = {f"load-{i}": registry.enrol(f"load-{i}") for i in range(config.clients)}
    registry.close()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    extra = tuple(arg for setting in config.server_settings for arg in ("--set", setting))
    server, port = launch_server(state, 0, config.out / "server.log", env, extra=extra)
    manifest = load_manifest(state / "model" / MANIFEST_FILE)
    channels = int(manifest.input("norm_stats").shape[1])
    stats = [ClientStats() for _ in tokens]
    stop = threading.Event()
    peak = [0]
    sampler = threading.Thread(target=_sample_rss, args=(server.pid, peak, stop), daemon=True)
    sampler.start()
    threads = [
        threading.Thread(
            target=_client,
            args=(
                f"127.0.0.1:{port}",
                device,
                token,
                manifest.sha256,
                channels,
                config,
                stats[i],
                stop,
            ),
            daemon=True,
        )
        for i, (device, token) in enumerate(tokens.items())
    ]
    for thread in threads:
        thread.start()
    time.sleep(config.seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    backlog = len(list((state / "inbox").glob("*.npz"))) if (state / "inbox").is_dir() else 0
    server.send_signal(signal.SIGTERM)
    exit_code: int | str
    try:
        exit_code = server.wait(timeout=120)
    except subprocess.TimeoutExpired:  # a finding, not a crash of the benchmark
        server.kill()
        server.wait()
        exit_code = "did not exit within 120 s of SIGTERM (killed)"
    return _summary(config, stats, peak[0], backlog, exit_code)


def _client(address, device, token, sha, channels, config, stats, stop):  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(address)
    stub = cdca_pb2_grpc.CloudAdaptationStub(channel)
    metadata = call_metadata(device, token)
    rng = np.random.default_rng(abs(hash(device)) % 2**32)
    try:
        stub.Register(
            cdca_pb2.RegisterRequest(
                device_id=device, protocol_version=PROTOCOL_VERSION, model_sha256=sha
            ),
            metadata=metadata,
            timeout=30,
        )
    except grpc.RpcError as err:
        stats.failures.append(f"Register: {err.code().name}")
        return
    watcher = threading.Thread(
        target=_watch, args=(stub, device, metadata, stats, stop), daemon=True
    )
    watcher.start()
    batch, pause_until = 0, 0.0
    while not stop.wait(
        config.period * rng.uniform(0.5, 1.5) if batch else rng.uniform(0, config.period)
    ):
        stats.batch = batch
        if time.monotonic() < pause_until:  # back-pressure: the cloud still has our last batch
            stats.held_back += 1
            batch += 1
            continue
        images = rng.integers(0, 256, (config.samples, 32, 32, 3), dtype=np.uint8)
        batch_stats = np.abs(rng.normal(0.5, 0.2, (2, channels))).astype(np.float32) + 0.01
        chunks = upload_chunks(
            device,
            batch,
            images,
            rng.random(config.samples, np.float32),
            np.arange(config.samples) + batch * 64,
            np.zeros(config.samples, np.int64),
            batch_stats,
            shift=False,
            frames_seen=(batch + 1) * 64,
        )
        start = time.perf_counter()
        try:
            summary = stub.Upload(iter(chunks), metadata=metadata, timeout=30)
            stats.upload_ms.append((time.perf_counter() - start) * 1e3)
            stats.uploads += 1
            pause_until = time.monotonic() + summary.upload_pause_ms / 1000
        except grpc.RpcError as err:
            stats.failures.append(f"Upload: {err.code().name}")
        batch += 1
    watcher.join(timeout=10)
    channel.close()


def _watch(stub, device, metadata, stats, stop):  # type: ignore[no-untyped-def]
    known = 0
    while not stop.is_set():
        try:
            for prompt in stub.WatchPrompts(
                cdca_pb2.PromptRequest(device_id=device, known_version=known),
                metadata=metadata,
                timeout=2.0,
            ):
                if prompt.version > known:
                    known = prompt.version
                    stats.staleness.append(max(0, stats.batch - prompt.learned_from_batch))
                    if prompt.created_unix_ms:
                        stats.delivery_ms.append(time.time() * 1e3 - prompt.created_unix_ms)
        except grpc.RpcError as err:
            if (
                err.code() != grpc.StatusCode.DEADLINE_EXCEEDED
            ):  # a deadline only re-opens the stream
                stats.failures.append(f"WatchPrompts: {err.code().name}")


def _sample_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    from simulations.harness.memory import process_rss_bytes

    while not stop.wait(0.5):
        peak[0] = max(peak[0], process_rss_bytes(pid))


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _summary(config, stats, peak, backlog, exit_code) -> dict[str, object]:  # type: ignore[no-untyped-def]
    uploads = [ms for s in stats for ms in s.upload_ms]
    delivery = [ms for s in stats for ms in s.delivery_ms]
    failures = [f for s in stats for f in s.failures]
    staleness = [b for s in stats for b in s.staleness]
    return {
        "clients": config.clients,
        "seconds": config.seconds,
        "server_settings": ", ".join(config.server_settings) or "defaults",
        "frames_per_second_per_device": round(64 / config.period, 1),
        "uploads": sum(s.uploads for s in stats),
        "batches_held_back": sum(s.held_back for s in stats),
        "uploads_per_second": round(sum(s.uploads for s in stats) / config.seconds, 1),
        "failed_rpcs": len(failures),
        "failures": sorted(set(failures)),
        "upload_ms_p50": _pct(uploads, 50),
        "upload_ms_p99": _pct(uploads, 99),
        "prompts_received": len(delivery),
        "devices_with_a_prompt": sum(bool(s.delivery_ms) for s in stats),
        "fewest_prompts_of_a_device": min((len(s.delivery_ms) for s in stats), default=0),
        "staleness_batches_p50": _pct(staleness, 50),
        "staleness_batches_p99": _pct(staleness, 99),
        "prompt_delivery_ms_p50": _pct(delivery, 50),
        "prompt_delivery_ms_p99": _pct(delivery, 99),
        "server_peak_rss_mb": round(peak / 2**20, 1),
        "inbox_backlog_at_stop": backlog,
        "server_exit_code": exit_code,
    }


def run_faults(out: Path, names: list[str], data: str) -> dict[str, dict[str, object]]:
    """Each named fault scenario in ``out/faults/<name>``; an exception is a failed scenario."""
    from rich.progress import Progress

    from simulations.bench import faults

    results: dict[str, dict[str, object]] = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("fault scenarios", total=len(names))
        for name in names:
            progress.update(task, description=f"fault: {name}")
            folder = out / "faults" / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            started = time.monotonic()
            try:
                if name == "flower_straggler":
                    results[name] = faults.flower_straggler(folder, data)
                else:
                    results[name] = faults.SCENARIOS[name](folder)
            except Exception as err:  # a finding to report, not a reason to stop the others
                results[name] = {"passed": False, "error": f"{type(err).__name__}: {err}"}
            results[name]["seconds"] = round(time.monotonic() - started, 1)
            progress.advance(task)
    return results


def passed(results: dict[str, object]) -> bool:
    """No failed RPC under load, a clean server exit, every fault scenario held."""
    load = results["load"]
    fault_results = results.get("faults", {})
    assert isinstance(load, dict)
    assert isinstance(fault_results, dict)
    return (
        load["failed_rpcs"] == 0
        and load["server_exit_code"] == 0
        and all(f["passed"] for f in fault_results.values())
    )


def markdown(results: dict[str, object]) -> str:
    """The load report and the fault scenarios as tables."""
    load = results["load"]
    assert isinstance(load, dict)
    lines = [
        "# Reliability under load and faults (`cdca bench reliability`)",
        "",
        f"{load['clients']} device clients against one `cdca cloud serve` on loopback for "
        f"{load['seconds']:.0f} s.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in load.items() if k not in ("clients", "seconds")]
    fault_results = results.get("faults") or {}
    assert isinstance(fault_results, dict)
    if fault_results:
        lines += [
            "",
            "## Fault scenarios",
            "",
            "| scenario | held | crashes | acknowledged samples lost | samples acknowledged "
            "| frames predicted | details | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [_fault_row(name, facts) for name, facts in fault_results.items()]
    hostile = fault_results.get("hostile_device")
    if isinstance(hostile, dict) and "with" in hostile:
        lines += hostile_table(hostile)
    return "\n".join(lines) + "\n"


def hostile_table(facts: dict[str, Any]) -> list[str]:
    """The hostile-device scenario: honest devices without and with the attacker."""
    from simulations.bench.hostile import ACCURACY_POINTS, ATTACKS, LATENCY_FACTOR

    calm, attacked = facts["without"], facts["with"]
    rows = [
        ("honest devices' accuracy", "honest_accuracy"),
        (
            "prompt turnaround p99 (ms): batch acknowledged to its prompt received",
            "turnaround_ms_p99",
        ),
        ("prompt delivery p99 (ms): published to received", "delivery_ms_p99"),
        ("prompts the honest devices received", "prompts_received"),
        ("server peak memory (MB)", "server_peak_rss_mb"),
        ("server state folder, peak (MB)", "state_peak_mb"),
        ("non-finite values saved or published", "non_finite_values"),
    ]
    lines = [
        "",
        "## One hostile device among honest ones",
        "",
        f"Held: {'yes' if facts['passed'] else '**no** (' + ', '.join(facts['failed_checks']) + ')'}. "
        f"Bounds: accuracy within {ACCURACY_POINTS} points, prompt turnaround p99 within "
        f"{LATENCY_FACTOR:g}x, nothing non-finite. The attacker cycled through "
        f"{', '.join(ATTACKS)}.",
        "",
        "| measure | without the attacker | with it |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {calm[key]} | {attacked[key]} |" for label, key in rows]
    answers = ", ".join(f"{code} {n}" for code, n in sorted(attacked["attack_calls"].items()))
    lines += ["", f"The server's answers to the attacker's calls: {answers}."]
    return lines


def _fault_row(name: str, facts: dict[str, object]) -> str:
    shown = (
        "frames_while_down",
        "frames_while_stalled",
        "queue_dropped_batches",
        "rounds",
        "partial_rounds",
        "failed_checks",
        "error",
    )
    details = ", ".join(f"{k}={facts[k]}" for k in shown if facts.get(k) not in (None, []))
    frames = (
        f"{facts['frames']} / {facts['expected_frames']}"
        if "expected_frames" in facts
        else facts.get("frames", "")
    )
    return (
        f"| {name} | {'yes' if facts['passed'] else '**no**'} | {facts.get('crashes', '')} "
        f"| {facts.get('lost_acknowledged', '')} | {facts.get('samples_acked', '')} | {frames} "
        f"| {details} | {facts.get('seconds', '')} |"
    )


def write(results: dict[str, object], out: Path) -> None:
    """``reliability.json`` and ``reliability.md``."""
    (out / "reliability.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "reliability.md").write_text(markdown(results))
