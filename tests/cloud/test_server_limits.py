"""What one device may cost the server: buckets, quotas, the fair queue and the registry's guards."""

import asyncio
import time
from pathlib import Path

import pytest

from cloud.server.fair_queue import FairQueue
from cloud.server.limits import DeviceAllowances, InboxQuota, TokenBucket
from cloud.server.registry import MAX_COUNT, DeviceRegistry
from cloud.server.worker import MAX_UPLOAD_PAUSE_SECONDS, AdaptationWorker
from protocol.config.server import LimitsConfig
from protocol.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_grants_its_burst_then_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=50, clock=clock)
    assert bucket.take(2**63) == 50  # a huge claim gets the burst, nothing more
    assert bucket.take(5) == 0
    assert bucket.seconds_until(5) == pytest.approx(0.5)
    clock.now = 1.0
    assert bucket.take(100) == 10
    clock.now = 1000.0
    assert bucket.take(100) == 50  # refills to its capacity, never beyond


def test_devices_have_their_own_sample_and_shift_allowances():
    clock = Clock()
    allowances = DeviceAllowances(LimitsConfig(sample_burst=8, shift_burst=2), clock)
    assert allowances.samples("a", 20) == 8
    assert allowances.samples("b", 20) == 8  # a's spending does not touch b's
    assert [allowances.shift("a") for _ in range(4)] == [True, True, False, False]
    clock.now = 5.0  # one shift per 5 s at the default 12 per minute
    assert allowances.shift("a")


def test_the_inbox_quota_counts_bytes_per_device_and_in_total():
    quota = InboxQuota(LimitsConfig(inbox_bytes_per_device=100, inbox_bytes_total=150))
    quota.add("a", 90)
    assert "over its quota" in quota.refusal("a", 20)
    assert quota.refusal("b", 50) is None
    quota.add("b", 50)
    assert "full" in quota.refusal("c", 20)
    quota.remove("a", 90)
    assert quota.refusal("c", 20) is None
    assert quota.total == 50


def test_the_fair_queue_shares_worker_time_and_keeps_each_devices_order():
    async def drain():
        queue = FairQueue()
        for i in range(5):
            queue.put("flood", Path(f"f{i}"))
        order = []
        for _ in range(2):  # the flood is alone: served, and charged for it
            order.append(await queue.get())
            queue.charge("flood", 1.0)
        queue.put("quiet", Path("q0"))  # joins at the flood's level: no credit, no debt
        queue.put("quiet", Path("q1"))
        for _ in range(4):
            device, path = await queue.get()
            order.append((device, path))
            queue.charge(device, 1.0 if device == "flood" else 0.1)
        return order, queue.waiting("flood"), queue.drop("flood"), queue.qsize()

    order, waiting, dropped, left = asyncio.run(drain())
    assert [p.name for _, p in order] == ["f0", "f1", "f2", "q0", "q1", "f3"]
    assert waiting == 1
    assert dropped == [Path("f4")]
    assert left == 0


def test_the_fair_queue_says_how_many_waiting_devices_go_first():
    queue = FairQueue()
    for device in ("a", "b", "c"):
        queue.put(device, Path(f"{device}0"))
    queue.charge("a", 2.0)  # a has used the most worker time: served last
    queue.charge("b", 1.0)
    assert [queue.ahead_of(d) for d in ("c", "b", "a")] == [0, 1, 2]
    assert queue.ahead_of("idle") == 3  # waits for nothing: every waiting device goes first
    first = asyncio.run(queue.get())
    assert first[0] == "c"
    assert queue.ahead_of("a") == 1


def test_the_upload_pause_lasts_until_the_worker_should_reach_the_device_again():
    """Back-pressure: one pass per ``fit_devices`` devices the fair queue serves first."""
    worker = object.__new__(AdaptationWorker)  # the policy alone: no models, no server
    worker.queue, worker.ray, worker.fit_devices = FairQueue(), None, 1
    worker.pass_seconds, worker.pass_began = 0.5, 0.0
    for i in range(10):  # ten devices with one batch each, served before "late"
        worker.queue.put(f"cam-{i}", Path(f"b{i}"))
    worker.queue.put("late", Path("l0"))
    assert worker.upload_pause("late") == 0.0  # one batch waiting: normal
    worker.queue.put("late", Path("l1"))
    assert worker.upload_pause("late") == pytest.approx(11 * 0.5)  # ten devices, then its own
    worker.fit_devices = 4  # four devices per pass: three passes
    assert worker.upload_pause("late") == pytest.approx(3 * 0.5)
    worker.pass_seconds = 1e6  # never longer than the cap
    assert worker.upload_pause("late") == MAX_UPLOAD_PAUSE_SECONDS


def test_counters_saturate_whatever_a_device_reports(tmp_path):
    registry = DeviceRegistry(tmp_path / "r.sqlite")
    registry.enrol("cam", "t")
    registry.count_upload("cam", 2**64 - 1, 5, 0)
    registry.count_upload("cam", 2**63 - 1, 5, 0)  # "a restart" with an absurd count
    record = registry.record("cam")
    assert record.frames_seen == MAX_COUNT
    assert record.frames_after(2**70) == MAX_COUNT


def test_tokens_expire_and_revoked_devices_are_refused(tmp_path):
    registry = DeviceRegistry(tmp_path / "r.sqlite")
    registry.enrol("old", "t", ttl_days=1e-9)  # expires after 86 microseconds
    registry.enrol("cam", "t", ttl_days=365)
    time.sleep(0.01)  # a fast disk can enrol both and ask again within those microseconds
    assert not registry.authenticate("old", "t")
    assert registry.authenticate("cam", "t")
    assert registry.revoke("cam", forget=True)
    assert not registry.revoke("nobody")
    assert not registry.authenticate("cam", "t")
    assert not registry.is_enrolled("cam")
    assert registry.pending_forgets() == ["cam"]
    assert registry.revoked_ids() == ["cam"]
    assert "cam" not in registry.device_ids()
    registry.forgotten("cam")
    assert registry.pending_forgets() == []
    registry.enrol("cam", "new")  # enrolling again lets it back in
    assert registry.authenticate("cam", "new")
    assert not registry.authenticate("cam", "t")


def test_enrolment_stops_at_max_devices(tmp_path):
    registry = DeviceRegistry(tmp_path / "r.sqlite")
    registry.enrol("a", max_devices=2)
    registry.enrol("b", max_devices=2)
    registry.enrol("a", max_devices=2)  # re-keying a known device is not a new one
    with pytest.raises(ConfigError, match="max_devices"):
        registry.enrol("c", max_devices=2)


def test_a_resent_upload_is_recognised_by_its_digest(tmp_path):
    registry = DeviceRegistry(tmp_path / "r.sqlite")
    registry.enrol("cam", "t")
    registry.count_upload("cam", 64, 6, 1, digest="abc")
    assert registry.earlier_upload("cam", "abc") == (6, 1)
    assert registry.earlier_upload("other", "abc") is None
    for i in range(100):  # only the latest uploads are remembered
        registry.count_upload("cam", 64 + i, 1, 0, digest=f"d{i}")
    assert registry.earlier_upload("cam", "abc") is None


def test_an_older_registry_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "r.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE devices (device_id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL, "
        "enrolled_at REAL NOT NULL, last_seen REAL, model_sha256 TEXT, frames_seen INTEGER "
        "NOT NULL DEFAULT 0, frames_reported INTEGER NOT NULL DEFAULT 0, accepted INTEGER "
        "NOT NULL DEFAULT 0, refused INTEGER NOT NULL DEFAULT 0, prompt_version INTEGER "
        "NOT NULL DEFAULT 0)"
    )
    db.commit()
    db.close()
    registry = DeviceRegistry(path)
    registry.enrol("cam", "t")
    assert registry.authenticate("cam", "t")


def test_refusals_are_logged_once_per_device_and_kind_per_interval(caplog):
    import logging

    from cloud.server.warnings import ThrottledWarnings

    clock = Clock()
    warnings = ThrottledWarnings(logging.getLogger("cdca.test"), interval=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="cdca.test"):
        for _ in range(1000):
            warnings.warn("mallory", "budget", "%s over budget", "mallory")
        warnings.warn("cam-a", "budget", "%s over budget", "cam-a")  # another device: its own line
        clock.now = 10.0
        warnings.warn("mallory", "budget", "%s over budget", "mallory")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "mallory over budget",
        "cam-a over budget",
        "mallory over budget (999 more like it in the last 10 s not logged)",
    ]


def test_the_log_throttle_stays_bounded_whatever_ids_arrive():
    import logging

    from cloud.server.warnings import MAX_KEYS, ThrottledWarnings

    clock = Clock()
    warnings = ThrottledWarnings(logging.getLogger("cdca.test"), interval=10, clock=clock)
    for i in range(3 * MAX_KEYS):
        clock.now = i * 0.01  # a new made-up id every 10 ms
        warnings.warn(f"id-{i}", "auth", "refused %s", i)
    assert len(warnings._last) <= MAX_KEYS
    for i in range(2 * MAX_KEYS):  # all within one window
        warnings.warn(f"burst-{i}", "auth", "refused %s", i)
    assert len(warnings._last) <= MAX_KEYS
