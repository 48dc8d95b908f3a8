"""The Flower round loop when devices fail or die: it says why, goes on without them, or stops."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flwr.app import ConfigRecord

from protocol.config.project import ProjectConfig
from protocol.errors import CdcaError
from simulations.fleet import flower_server
from simulations.fleet.flower_server import FleetRounds


@pytest.fixture(autouse=True)
def no_flower_run(monkeypatch):
    """Messages need a Flower run's identity; the fake grid only counts them."""
    monkeypatch.setattr(flower_server, "Message", lambda *args, **kwargs: None)


@dataclass
class Reply:
    """What ``Grid.send_and_receive`` yields, reduced to what the loop reads."""

    node: int
    reason: str = ""  # an error reply when set
    metadata: object = field(init=False)
    error: object = field(init=False)

    def __post_init__(self) -> None:
        self.metadata = type("Metadata", (), {"src_node_id": self.node})()
        self.error = type("Error", (), {"reason": self.reason})()

    def has_content(self) -> bool:
        return not self.reason

    def has_error(self) -> bool:
        return bool(self.reason)


class Grid:
    """Node 1 answers every round; node 2 fails every time (a SuperNode without its stream)."""

    def send_and_receive(self, messages, timeout):
        return [Reply(1), Reply(2, "FileNotFoundError: streams/device-1.npz")]


def rounds(min_devices: int) -> FleetRounds:
    project = ProjectConfig()
    fleet = project.fleet.__class__(devices=2, min_devices=min_devices, max_missed_rounds=3)
    loop = FleetRounds.__new__(FleetRounds)  # the loop's bookkeeping only: no teacher needed
    loop.fleet, loop.base, loop.settings = fleet, {}, ConfigRecord({})
    loop.rounds = loop.partial_rounds = 0
    loop.missed, loop.reasons, loop.dropped = {}, {}, {}
    return loop


def test_a_failing_device_says_why_and_is_left_out_after_its_missed_rounds(caplog):
    loop = rounds(min_devices=1)
    with caplog.at_level(logging.ERROR, logger="cdca.flower"):
        for _ in range(3):
            replies = loop._query(Grid(), [1, 2], {1: 0, 2: 0})
            assert list(replies) == [1]  # the cloud goes on with the device that answers
            loop.rounds += 1
    assert loop.dropped == {2: "FileNotFoundError: streams/device-1.npz"}
    failures = [r.getMessage() for r in caplog.records if "node 2 failed" in r.getMessage()]
    assert len(failures) == 1  # said once, not every round
    assert any("the run goes on without it" in r.getMessage() for r in caplog.records)


def test_a_run_left_with_too_few_devices_stops_with_the_reason():
    loop = rounds(min_devices=2)
    for _ in range(2):  # missed rounds under the limit: the round is retried
        assert loop._query(Grid(), [1, 2], {1: 0, 2: 0}) == {}
    with pytest.raises(CdcaError, match="FileNotFoundError"):  # the ServerApp raising fails the run
        loop._query(Grid(), [1, 2], {1: 0, 2: 0})


BATCH_RECORD = {
    "batch": 0,
    "domain": 0,
    "frames": 64,
    "correct": 50,
    "uploaded": 6,
    "shift": 0,
    "bytes_up": 1000,
    "prompt_version": 0,
}


def test_a_devices_bad_upload_is_refused_without_stopping_the_run(monkeypatch, caplog):
    from protocol.errors import DataError

    class Teacher:
        def ingest(self, device_id, upload):
            raise DataError("batch means lie over 1000 standard deviations from the model's")

    loop = rounds(min_devices=1)
    loop.teacher, loop.progress, loop.records, loop.refused_uploads = Teacher(), None, {}, 0
    monkeypatch.setattr(flower_server, "upload_from_record", lambda record: record)
    content = type(
        "Content",
        (),
        {"config_records": {"batch-0": BATCH_RECORD}, "array_records": {"upload-0": {}}},
    )()
    reply = type("Reply", (), {"content": content})()
    with caplog.at_level(logging.WARNING, logger="cdca.flower"):
        assert loop._ingest(1, 0, reply, 0, {}) == 1  # the batch counts; its upload does not
    assert loop.refused_uploads == 1
    assert "standard deviations" in caplog.text


@pytest.mark.slow  # about a minute: a real SuperLink and two SuperNodes on loopback
def test_a_real_run_with_a_failing_supernode_fails_and_says_why(
    tmp_path, tiny_benchmark, tiny_distilled, shipped_random_teacher
):
    import subprocess
    import sys

    from protocol.config.project import load_project
    from simulations.fleet.deployment import (
        CONNECTION,
        LoopbackFederation,
        _wait,
        project_root,
        run_config,
    )
    from tests.simulations.test_simulate import project_file

    path = project_file(
        tmp_path,
        tiny_benchmark,
        tiny_distilled,
        shipped_random_teacher,
        fleet={"per_domain": 8, "min_devices": 2, "max_missed_rounds": 2},
    )
    project = load_project(str(path))
    run_dir, folder = tmp_path / "run", tmp_path / "run" / "flower"
    folder.mkdir(parents=True)
    (folder / "run-config.toml").write_text(run_config(project, run_dir, folder))
    missing = tmp_path / "no-such-stream.npz"
    with LoopbackFederation(folder, 2, {1: f'stream="{missing}"'}) as federation:
        started = federation.flwr(
            "run", str(project_root()), CONNECTION, "--run-config", str(folder / "run-config.toml")
        )
        run_id = str(started["run-id"])
        status = _wait(federation, run_id, run_dir, None, timeout=600)
        log = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "log", run_id, CONNECTION, "--show"],
            capture_output=True,
            text=True,
            env=federation.env,
            cwd=project_root(),
            timeout=60,
        )
    assert status["status"] == "finished:failed", status
    assert "no-such-stream.npz" in log.stdout + log.stderr  # why the device failed
    assert "fewer than fleet.min_devices=2" in log.stdout + log.stderr


def test_a_devices_malformed_batch_record_costs_that_batch_not_the_run(caplog):
    loop = rounds(min_devices=1)
    loop.teacher, loop.progress, loop.records = None, None, {}
    loop.refused_uploads = loop.refused_records = 0
    bad = {**BATCH_RECORD, "batch": 1, "frames": 0}  # the report would divide by it
    content = type(
        "Content",
        (),
        {"config_records": {"batch-0": BATCH_RECORD, "batch-1": bad}, "array_records": {}},
    )()
    reply = type("Reply", (), {"content": content})()
    with caplog.at_level(logging.WARNING, logger="cdca.flower"):
        assert loop._ingest(1, 0, reply, 0, {}) == 2  # both batches are behind the device
    assert [r.batch for r in loop.records[0]] == [0]
    assert loop.refused_records == 1
    assert "record of batch 1 refused" in caplog.text
