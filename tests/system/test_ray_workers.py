"""The server's fits on a local Ray with two workers: a killed worker's devices move, nothing is lost."""

import time

import pytest

from cloud.server.storage import Inbox, IngestLedger
from protocol.v1 import cdca_pb2
from tests.system.conftest import registered_server
from tests.system.test_prompt_flow import wait_for_prompt, wait_until_ingested
from tests.system.test_wire_errors import good_chunks, upload

ray = pytest.importorskip("ray")


def send(server, device_id, first, count):
    for batch in range(first, first + count):
        chunks = good_chunks(
            device_id, n=8, batch_id=batch, frames_seen=1000 * (batch + 1), seed=batch
        )
        upload(server, chunks, server.metadata(device_id))


def holder(device_id):
    """The Ray actor whose sessions include ``device_id``, and the other live ones."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    actors = {name: ray.get_actor(name) for name in names if "-worker-" in name}
    holding = [n for n, a in actors.items() if device_id in ray.get(a.devices.remote())]
    assert len(holding) == 1, holding
    return actors[holding[0]], [a for n, a in actors.items() if n != holding[0]]


@pytest.mark.slow
def test_a_killed_ray_worker_hands_its_devices_to_the_other_and_no_sample_is_lost(
    exported, distilled, tmp_path
):
    server = registered_server(
        exported, distilled, tmp_path / "state", ray_address="local", ray_workers=2
    )
    try:
        send(server, "cam-a", 0, 3)
        send(server, "cam-b", 0, 3)
        wait_for_prompt(server)
        wait_until_ingested(server.state_dir)
        before = server.stub().GetPrompt(
            cdca_pb2.PromptRequest(device_id="cam-a"), metadata=server.metadata(), timeout=5
        )
        doomed, survivors = holder("cam-a")
        assert len(survivors) == 1
        ray.kill(doomed, no_restart=True)
        time.sleep(1)
        send(server, "cam-a", 3, 3)  # the next passes find the worker dead
        wait_until_ingested(server.state_dir)
        later = wait_for_prompt(server, known=before.version)
        assert later.version > before.version  # cam-a is adapted again, by the survivor
        assert "cam-a" in ray.get(survivors[0].devices.remote())
    finally:
        server.stop()
    ledger = IngestLedger(server.state_dir / "ingested.log")
    assert sum(ledger.files("cam-a").values()) == 6 * 8  # every acknowledged sample ingested
    assert sum(ledger.files("cam-b").values()) == 3 * 8
    assert not Inbox(server.state_dir / "inbox").pending()
    assert not (server.state_dir / "rejected").exists()
