import pytest

from cloud.data.corruptions import TEST_CORRUPTIONS
from cloud.data.formats import open_benchmark
from protocol.errors import UnknownNameError
from simulations.streams import (
    GRADUAL_SEVERITIES,
    continual,
    device_streams,
    gradual,
    iterate_batches,
    parse_stream,
    random_order,
)


def test_continual_is_cotta_order_at_one_severity():
    spec = continual(severity=5, num_per_domain=100)
    assert spec.domains() == list(TEST_CORRUPTIONS)
    assert {s.severity for s in spec.segments} == {5}
    assert spec.num_images() == 1500


def test_random_orders_are_seeded_and_differ():
    assert random_order(3).domains() == random_order(3).domains()
    orders = {tuple(random_order(seed).domains()) for seed in range(10)}
    assert len(orders) == 10
    assert all(sorted(order) == sorted(TEST_CORRUPTIONS) for order in orders)


def test_gradual_walks_severity_up_and_down_per_domain():
    spec = gradual(num_per_step=10)
    first = [s.severity for s in spec.segments if s.corruption == "gaussian_noise"]
    assert tuple(first) == GRADUAL_SEVERITIES
    offsets = [s.offset for s in spec.segments if s.corruption == "fog"]
    assert offsets == sorted(set(offsets))  # fresh images at every step


def test_device_streams_differ_in_order_and_offset():
    base = continual(num_per_domain=100)
    streams = device_streams(base, num_devices=4, pool_size=1000, seed=0)
    assert streams[0] == base
    assert len({tuple(s.domains()) for s in streams}) == 4
    assert [s.segments[0].offset for s in streams] == [0, 100, 200, 300]
    assert all(sorted(s.domains()) == sorted(base.domains()) for s in streams)


def test_parse_stream_kinds_and_errors():
    assert len(parse_stream("random:5")) == 5
    assert parse_stream("gradual", num_per_domain=90)[0].segments[0].count == 10
    with pytest.raises(UnknownNameError, match="continual"):
        parse_stream("contiual")


def test_batches_never_straddle_domains(tiny_benchmark):
    spec = continual(["gaussian_noise", "contrast"], severity=2, num_per_domain=10, batch_size=4)
    batches = list(iterate_batches(open_benchmark(tiny_benchmark), spec))
    assert [len(b.labels) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert [b.segment.corruption for b in batches][2:4] == ["gaussian_noise", "contrast"]
