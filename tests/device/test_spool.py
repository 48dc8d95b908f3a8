import numpy as np
import pytest

from device.spool import PromptCache, UploadQueue
from protocol.errors import ConfigError


def test_queue_is_fifo_and_forgets_only_acknowledged_chunks(tmp_path):
    queue = UploadQueue(tmp_path / "q")
    seqs = [queue.put(bytes([i]) * 10) for i in range(3)]
    assert len(queue) == 3
    seq, payload = queue.peek()
    assert seq == seqs[0]
    assert payload == b"\0" * 10
    assert queue.peek()[0] == seqs[0]  # peeking does not consume
    queue.ack(seq)
    assert queue.peek()[0] == seqs[1]


def test_full_queue_drops_the_oldest_and_counts_across_restarts(tmp_path):
    queue = UploadQueue(tmp_path / "q", max_items=3)
    for i in range(5):
        queue.put(bytes([i]))
    assert len(queue) == 3
    assert queue.dropped == 2
    assert queue.peek()[1] == bytes([2])
    again = UploadQueue(tmp_path / "q", max_items=3)  # a device restart
    assert len(again) == 3
    assert again.dropped == 2
    assert again.put(b"x") > 4  # sequence numbers keep growing


def test_byte_bound_and_half_written_files(tmp_path):
    queue = UploadQueue(tmp_path / "q", max_bytes=25)
    for _ in range(3):
        queue.put(b"a" * 10)
    assert len(queue) == 2
    assert queue.dropped == 1
    (tmp_path / "q" / "000000000099.chunk.tmp").write_bytes(b"partial")
    assert len(UploadQueue(tmp_path / "q", max_bytes=25)) == 2
    assert not list((tmp_path / "q").glob("*.tmp"))
    with pytest.raises(ConfigError, match="never fit"):
        queue.put(b"a" * 26)


def test_prompt_cache_round_trip_and_unreadable_file(tmp_path):
    cache = PromptCache(tmp_path / "prompt.npz")
    assert cache.load() is None
    parts = {"norm_affine": np.arange(6, dtype=np.float32).reshape(2, 3)}
    cache.save(4, parts)
    version, loaded = PromptCache(tmp_path / "prompt.npz").load()
    assert version == 4
    np.testing.assert_array_equal(loaded["norm_affine"], parts["norm_affine"])
    (tmp_path / "prompt.npz").write_bytes(b"not an npz")
    assert cache.load() is None


def test_a_chunk_acked_by_the_uploader_during_a_put_does_not_crash_it(tmp_path, monkeypatch):
    queue = UploadQueue(tmp_path / "q", max_items=3)
    first, second = queue.put(b"a"), queue.put(b"b")
    listing = queue._sequence_numbers()  # taken just before the uploader thread acks
    queue.ack(first)
    monkeypatch.setattr(queue, "_sequence_numbers", lambda: [*listing, second + 1])
    queue.put(b"c")  # used to raise FileNotFoundError on the vanished chunk
    monkeypatch.undo()
    assert len(queue) == 2
    assert queue.dropped == 0
