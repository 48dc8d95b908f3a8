import numpy as np

from device.link import Backoff, CloudLink, LinkConfig, encode_upload
from device.spool import UploadQueue
from protocol.messages import prompt_message
from protocol.upload import Upload


def make_link(tmp_path, received):
    config = LinkConfig("127.0.0.1:1", "cam-1", "t", "0" * 64)
    return CloudLink(config, UploadQueue(tmp_path / "q"), {"norm_affine": (2, 4)}, received.append)


def test_prompts_with_nan_or_the_wrong_shape_are_refused_and_not_asked_for_again(tmp_path):
    received = []
    link = make_link(tmp_path, received)
    link._deliver(prompt_message({"norm_affine": np.full((2, 4), np.nan)}, version=1))
    link._deliver(prompt_message({"norm_affine": np.zeros((3, 4))}, version=2))
    link._deliver(prompt_message({"other": np.zeros((2, 4))}, version=3))
    assert received == []
    assert link.known_version == 3
    link._deliver(prompt_message({"norm_affine": np.ones((2, 4))}, version=4))
    link._deliver(prompt_message({"norm_affine": np.ones((2, 4))}, version=4))  # a repeat
    assert [p.version for p in received] == [4]
    link.close()


def test_backoff_grows_with_jitter_up_to_its_cap_and_resets():
    backoff = Backoff(0.1, 1.0)
    waits = [backoff.next_wait() for _ in range(8)]
    assert all(0.05 <= w <= 1.0 for w in waits)
    assert max(waits[-3:]) > 0.5 > waits[0]
    backoff.reset()
    assert backoff.next_wait() <= 0.1


def test_a_device_with_no_cloud_keeps_its_queue(tmp_path):
    link = make_link(tmp_path, [])
    link.queue.put(
        encode_upload(
            Upload(
                batch_id=0,
                images=np.zeros((1, 32, 32, 3), np.uint8),
                uncertainty=np.ones(1, np.float32),
                frame_ids=np.zeros(1, np.int64),
                predicted=np.zeros(1, np.int64),
                batch_stats=np.ones((2, 4), np.float32),
                shift=False,
                frames_seen=10,
            )
        )
    )
    link.start()
    assert not link.drain(0.5)  # nothing listens on port 1: the upload waits on disk
    link.close()
    assert len(UploadQueue(tmp_path / "q")) == 1
    assert link.stats.rpc_errors >= 1
