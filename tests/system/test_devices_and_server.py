"""The running system as users start it: ``cdca cloud serve`` plus ``cdca device run`` processes.

Real data (Fashion-MNIST test images corrupted at severity 5), the shipped student and
built-in teacher, real gRPC on loopback. The second test SIGKILLs the server mid-stream.
"""

import signal
import time

import numpy as np
import pytest

from tests.system import processes as proc

DOMAINS = ["gaussian_noise", "contrast", "impulse_noise", "fog", "pixelate", "shot_noise"]


def source_accuracy(model_dir, stream):
    from device.runtime import DeviceRuntime

    runtime = DeviceRuntime.load(model_dir / "student.manifest.json")
    with np.load(stream) as data:
        images, labels = data["images"], data["labels"]
    hits = sum(int((runtime.predict(images[i : i + 64]).logits.argmax(1) == labels[i : i + 64]).sum())
               for i in range(0, len(images), 64))  # fmt: skip
    return hits / len(images)


def line_count(path):
    return sum(1 for _ in open(path)) if path.is_file() else 0


@pytest.mark.usefixtures("fashion_mnist_installed")
def test_three_device_processes_improve_over_source_and_shut_down_cleanly(tmp_path):
    state = tmp_path / "cloud"
    state.mkdir()
    tokens = {f"cam-{i}": proc.enrol(state, f"cam-{i}") for i in range(3)}
    port = proc.free_port()
    server = proc.start_server(state, port, tmp_path / "server.log")
    devices, streams = {}, {}
    try:
        for i, device_id in enumerate(tokens):
            order = DOMAINS[i:] + DOMAINS[:i]  # each device meets the shifts in its own order
            streams[device_id] = proc.corrupted_stream(
                tmp_path / f"{device_id}.npz", order[:4], 192, i * 800
            )
            out = tmp_path / f"{device_id}.jsonl"
            devices[device_id] = proc.start_device(streams[device_id], tmp_path, state / "model",
                                                   port, device_id, tokens[device_id], 120, out)  # fmt: skip
        codes = {d: p.wait(timeout=180) for d, p in devices.items()}
    finally:
        for p in devices.values():
            if p.poll() is None:
                p.kill()
        server_code = proc.stop(server)
    assert codes == dict.fromkeys(tokens, 0), [
        (tmp_path / f"{d}.log").read_text()[-2000:] for d in tokens
    ]
    assert server_code == 0
    assert not proc.processes_mentioning(str(tmp_path))
    for device_id in tokens:
        result = proc.summary(tmp_path, device_id)
        source = source_accuracy(state / "model", streams[device_id])
        assert result["frames"] == 768 == line_count(tmp_path / f"{device_id}.jsonl")
        assert result["prompts_applied"] >= 1, result
        assert result["queue_left"] == 0, result
        assert result["rpc_errors"] == 0, result
        assert result["accuracy"] > source + 0.05, (device_id, result["accuracy"], source)
    log = (tmp_path / "server.log").read_text()
    assert "shutting down" in log
    assert "Traceback" not in log


@pytest.mark.usefixtures("fashion_mnist_installed")
def test_server_killed_mid_stream_restarts_with_its_state_and_devices_carry_on(tmp_path):
    state = tmp_path / "cloud"
    state.mkdir()
    token = proc.enrol(state, "cam-0")
    port = proc.free_port()
    log = tmp_path / "server.log"
    server = proc.start_server(state, port, log)
    stream = proc.corrupted_stream(tmp_path / "stream.npz", DOMAINS, 300)
    out = tmp_path / "cam-0.jsonl"
    device = proc.start_device(stream, tmp_path, state / "model", port, "cam-0", token, 80, out)
    try:
        deadline = time.monotonic() + 60
        while "prompt v" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "prompt v" in log.read_text(), "no prompt before the kill"
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        lines_at_kill = line_count(out)
        time.sleep(3)
        assert line_count(out) > lines_at_kill, (
            "the device stopped predicting while the cloud was down"
        )
        assert device.poll() is None, "stream ended before the restart: make it longer"
        server = proc.start_server(state, port, log)
        assert device.wait(timeout=180) == 0, (tmp_path / "cam-0.log").read_text()[-2000:]
    finally:
        if device.poll() is None:
            device.kill()
        if server.poll() is None:
            proc.stop(server)
    result = proc.summary(tmp_path, "cam-0")
    text = log.read_text()
    assert result["frames"] == len(DOMAINS) * 300 == line_count(out)
    assert result["rpc_errors"] >= 1, "the device never noticed the outage"
    assert result["queue_left"] == 0, result  # everything queued while the cloud was down arrived
    assert result["samples_acked"] + result["samples_refused"] >= result["uploads_queued"]
    assert "restored cam-0's prompt bank" in text
    assert text.count("registered cam-0") >= 2  # it came back by itself


def wait_for(path, text, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return True
        time.sleep(0.2)
    return False


def test_a_killed_device_restarts_with_its_prompt_and_a_stalled_server_does_not_stop_it(tmp_path):
    state = tmp_path / "cloud"
    state.mkdir()
    token = proc.enrol(state, "cam-0")
    port = proc.free_port()
    server = proc.start_server(state, port, tmp_path / "server.log")
    stream = proc.corrupted_stream(tmp_path / "stream.npz", DOMAINS, 300)
    device_log = tmp_path / "cam-0.log"
    device = proc.start_device(
        stream, tmp_path, state / "model", port, "cam-0", token, 80, tmp_path / "a.jsonl"
    )
    try:
        assert wait_for(device_log, "applied prompt v"), "no prompt before the kill"
        device.send_signal(signal.SIGKILL)  # the device dies; its prompt cache stays on disk
        device.wait(timeout=10)
        out = tmp_path / "b.jsonl"
        device = proc.start_device(stream, tmp_path, state / "model", port, "cam-0", token, 80, out)
        assert wait_for(device_log, "restored prompt v", 30), device_log.read_text()[-2000:]
        assert wait_for(out, '"frame": 100', 30)
        server.send_signal(signal.SIGSTOP)  # a stalled cloud: connections open, no answers
        lines_at_stall = line_count(out)
        time.sleep(4)
        assert line_count(out) > lines_at_stall + 100, "the device waited for a stalled cloud"
        server.send_signal(signal.SIGCONT)
        assert device.wait(timeout=180) == 0, device_log.read_text()[-2000:]
    finally:
        server.send_signal(signal.SIGCONT)
        if device.poll() is None:
            device.kill()
        proc.stop(server)
    result = proc.summary(tmp_path, "cam-0")
    assert result["frames"] == len(DOMAINS) * 300 == line_count(out)
    assert result["queue_left"] == 0, result
