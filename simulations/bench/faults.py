"""Fault scenarios with real processes: what ``cdca bench reliability`` reports and tests assert.

Each scenario starts ``cdca cloud serve`` and ``cdca device run`` (or ``cdca simulate``)
the way users do, injects one fault, and returns its facts: the checks that held, frames
predicted, crashes (a process that exited non-zero or logged a traceback), and
acknowledged samples the cloud cannot account for (``lost_acknowledged``): the device's
acknowledged count against the server's ingest ledger, inbox and ``rejected/`` folder.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulations.bench.hostile import hostile_device
from simulations.bench.rig import (
    DOMAINS,
    Rig,
    corrupted_stream,
    line_count,
    wait_for,
    wait_until,
)

PER_DOMAIN = 300
FPS = 80.0
FULL_QUEUE_DRAIN_S = 240.0  # > the rig's 120 s server-start limit, so a slow start still counts
Facts = dict[str, Any]


def server_killed(workdir: Path) -> Facts:
    """SIGKILL the server after its first prompt; the device predicts on; a restart resumes."""
    rig, token, stream = _served_device(workdir)
    out = workdir / "cam-0.jsonl"
    device = rig.start_device(stream, "cam-0", token, out, fps=FPS)
    with rig.cleanup(device):
        prompt_before = wait_for(rig.log, "prompt v")
        rig.kill_server(signal.SIGKILL)
        lines_at_kill = line_count(out)
        time.sleep(3)
        predicted_while_down = line_count(out) - lines_at_kill
        alive_at_restart = device.poll() is None
        rig.restart_server()
        device_exit = device.wait(timeout=180)
    log = rig.log.read_text()
    facts = rig.accounting("cam-0", len(DOMAINS) * PER_DOMAIN, out, {"cam-0": device_exit})
    checks = {
        "a prompt before the kill": prompt_before,
        "the device predicted while the cloud was down": predicted_while_down > 0,
        "the stream outlived the outage": alive_at_restart,
        "the prompt bank was restored": "restored cam-0's prompt bank" in log,
        "the device re-registered by itself": log.count("registered cam-0") >= 2,
        "the outage was noticed": int(facts["rpc_errors"]) >= 1,
    }
    return _verdict(facts, checks, frames_while_down=predicted_while_down)


def device_killed(workdir: Path) -> Facts:
    """SIGKILL a device after it applied a prompt; the restarted device starts from its cache."""
    rig, token, stream = _served_device(workdir)
    device = rig.start_device(stream, "cam-0", token, workdir / "a.jsonl", fps=FPS)
    with rig.cleanup(device):
        applied = wait_for(rig.device_log("cam-0"), "applied prompt v")
        device.send_signal(signal.SIGKILL)  # its prompt cache and upload queue stay on disk
        device.wait(timeout=10)
        held_before = rig.settled_holdings("cam-0")  # the first run's; its summary died with it
        out = workdir / "b.jsonl"
        device = rig.start_device(stream, "cam-0", token, out, fps=FPS)
        restored = wait_for(rig.device_log("cam-0"), "restored prompt v", 30)
        device_exit = device.wait(timeout=180)
    facts = rig.accounting(
        "cam-0", len(DOMAINS) * PER_DOMAIN, out, {"cam-0": device_exit}, held_before
    )
    checks = {
        "a prompt applied before the kill": applied,
        "the restarted device restored its cached prompt": restored,
    }
    return _verdict(facts, checks)


def server_stalled(workdir: Path) -> Facts:
    """SIGSTOP the server for 4 s (connections open, no answers): the device keeps predicting."""
    rig, token, stream = _served_device(workdir)
    out = workdir / "cam-0.jsonl"
    device = rig.start_device(stream, "cam-0", token, out, fps=FPS)
    with rig.cleanup(device):
        started = wait_for(out, '"frame": 100', 60)
        rig.server_signal(signal.SIGSTOP)
        lines_at_stall = line_count(out)
        time.sleep(4)
        predicted_while_stalled = line_count(out) - lines_at_stall
        rig.server_signal(signal.SIGCONT)
        device_exit = device.wait(timeout=180)
    facts = rig.accounting("cam-0", len(DOMAINS) * PER_DOMAIN, out, {"cam-0": device_exit})
    checks = {
        "the device was running before the stall": started,
        # 4 s at 80 fps is 320 frames; a device waiting on the cloud would predict none
        "the device kept predicting through the stall": predicted_while_stalled > 100,
    }
    return _verdict(facts, checks, frames_while_stalled=predicted_while_stalled)


def full_queue(workdir: Path) -> Facts:
    """The cloud goes away and a 4-batch upload queue fills: the oldest batches are dropped, counted."""
    rig = Rig.start(workdir)  # once, to write the device model; then it is stopped
    token = rig.enrol("cam-0")
    rig.kill_server()
    domains = DOMAINS[:2]
    stream = corrupted_stream(workdir / "stream.npz", domains, PER_DOMAIN)
    out = workdir / "cam-0.jsonl"
    # The 600-frame stream ends within seconds of the overflow, and a server start can take
    # over 30 s on a slow, loaded 2-core machine: the device must still be draining its queue
    # when the cloud comes back, or nothing arrives and the check fails for timing alone.
    device = rig.start_device(
        stream, "cam-0", token, out, fps=FPS, queue_items=4, drain_seconds=FULL_QUEUE_DRAIN_S
    )
    with rig.cleanup(device):
        overflowed = wait_until(lambda: _dropped(workdir / "cam-0" / "queue" / "dropped") > 0)
        rig.restart_server()
        device_exit = device.wait(timeout=FULL_QUEUE_DRAIN_S + 60)
    facts = rig.accounting("cam-0", len(domains) * PER_DOMAIN, out, {"cam-0": device_exit})
    summary = rig.summary("cam-0")
    checks = {
        "the queue overflowed while the cloud was away": overflowed,
        "dropped batches were counted": int(summary["queue_dropped"]) >= 1,
        "what was kept arrived after the cloud came up": int(summary["samples_acked"]) > 0,
    }
    return _verdict(facts, checks, queue_dropped_batches=summary["queue_dropped"])


def flower_straggler(workdir: Path, data: str = "data/fashion-mnist-c") -> Facts:
    """``cdca simulate`` on the Flower Simulation Engine with one device 6 s late in round 1."""
    from simulations.harness.processes import CDCA

    project = workdir / "straggler.toml"
    project.write_text(
        '[fleet]\ndevices = 2\nper_domain = 128\ncorruptions = ["gaussian_noise", "fog"]\n'
        "peers = []\ncompare_bank = false\nround_timeout_s = 3.0\n"
        "slow_device = 1\nslow_rounds = 1\nslow_delay_s = 6.0\n"
    )
    run = workdir / "run"
    with open(workdir / "simulate.log", "w") as log:
        code = subprocess.run(
            [
                *CDCA,
                "simulate",
                "--project",
                str(project),
                "--data",
                data,
                "--engine",
                "flower-sim",
                "--out",
                str(run),
                "--threads",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=Rig.ENV,
            timeout=900,
        ).returncode
    if code != 0:
        return _verdict(
            {"crashes": 1, "lost_acknowledged": 0, "simulate_exit": code},
            {"cdca simulate succeeded": False},
        )
    import json

    results = json.loads((run / "results.json").read_text())
    cloud, devices = results["cloud"]["uvpa"], results["devices"]["uvpa"]
    frames = [d["frames"] for d in devices]
    checks = {
        "a round went on without the straggler": cloud["partial_rounds"] >= 1,
        "no batch was lost": frames == [2 * 128] * 2,
    }
    # a straggler's batches must be counted once it catches up: none may go missing
    facts = {
        "crashes": 0,
        "lost_acknowledged": sum(2 * 128 - f for f in frames),
        "rounds": cloud["rounds"],
        "partial_rounds": cloud["partial_rounds"],
        "frames": frames,
    }
    return _verdict(facts, checks)


SCENARIOS: dict[str, Callable[[Path], Facts]] = {
    "server_killed": server_killed,
    "device_killed": device_killed,
    "server_stalled": server_stalled,
    "full_queue": full_queue,
    "flower_straggler": flower_straggler,
    "hostile_device": hostile_device,
}


def _served_device(workdir: Path) -> tuple[Rig, str, Path]:
    """A listening server, device ``cam-0`` enrolled, and its 6-corruption stream."""
    rig = Rig.start(workdir)
    token = rig.enrol("cam-0")
    return rig, token, corrupted_stream(workdir / "stream.npz", DOMAINS, PER_DOMAIN)


def _dropped(counter: Path) -> int:
    text = counter.read_text() if counter.is_file() else ""
    return int(text) if text.isdigit() else 0


def _verdict(facts: Facts, checks: dict[str, bool], **extra: object) -> Facts:
    if "expected_frames" in facts:  # a device run: every frame predicted, written, delivered
        checks = {
            **checks,
            "every frame predicted": facts["frames"] == facts["expected_frames"],
            "every frame written": facts["lines_written"] == facts["expected_frames"],
            "the upload queue drained": facts["queue_left"] == 0,
        }
    failed = [name for name, held in checks.items() if not held]
    passed = not failed and facts.get("crashes") == 0 and facts.get("lost_acknowledged") == 0
    return {"passed": passed, "failed_checks": failed, **facts, **extra}
