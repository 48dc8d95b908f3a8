"""The device's lean uplink against a real server on loopback: image files, float16
statistics sent only when they moved, and a cloud that lost them asking for them again."""

import numpy as np

from device.link import CloudLink, LinkConfig, encode_upload
from device.spool import UploadQueue
from protocol.upload import Upload
from tests.system.conftest import TOKENS
from tests.system.test_untrusted_devices import stored_batches
from tests.system.test_wire_errors import K


def an_upload(batch_id: int, seed: int) -> Upload:
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
    return Upload(
        batch_id=batch_id,
        images=np.repeat(grey, 3, axis=3),
        uncertainty=np.full(6, 0.5, np.float32),
        frame_ids=np.arange(6, dtype=np.int64) + 64 * batch_id,
        predicted=np.zeros(6, np.int64),
        batch_stats=np.abs(rng.normal(1, 0.1, (2, K))).astype(np.float32),
        shift=False,
        frames_seen=1000 * (batch_id + 1),
    )


def test_a_link_sends_image_files_and_resends_statistics_the_cloud_lost(live_server, tmp_path):
    config = LinkConfig(live_server.address, "cam-a", TOKENS["cam-a"], live_server.manifest_sha256)
    link = CloudLink(config, UploadQueue(tmp_path / "queue"), {}, lambda prompt: None)
    link._register()
    assert link.encoding.image_format == "png"  # what the server's settings say
    first, second = an_upload(0, seed=0), an_upload(1, seed=0)  # the same statistics
    link.stats_sender.acknowledged(first.batch_stats, included=True)  # as if sent before a restart
    skipped = []
    for upload in (first, second):
        link.queue.put(encode_upload(upload))
        seq, payload = link.queue.peek()
        assert link._send(seq, payload) is True
        skipped.append(link.stats_sender.skipped)
    # the first went out without statistics, was asked for them (ABORTED) and resent with
    # them; the second went out without, the cloud using the ones it now holds
    assert skipped == [0, 1]
    assert link.stats.uploads_acked == 2
    assert link.stats.samples_acked == 12
    assert len(stored_batches(live_server, "cam-a")) == 2
    raw_pixels = 2 * 6 * 32 * 32 * 3
    assert link.stats.bytes_up < raw_pixels / 2  # grey frames as one-channel PNG, half stats
    link.close()
