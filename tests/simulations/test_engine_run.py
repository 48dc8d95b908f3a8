"""The value every fleet engine returns survives JSON (the Flower ServerApp's results file)."""

import pytest

from device.replay import BatchRecord
from protocol.errors import DataError
from simulations.fleet.engine_run import EngineRun


def test_an_engine_run_round_trips_through_json():
    record = BatchRecord(3, 1, 64, 50, 6, True, 1234, 2)
    run = EngineRun([[record], []], [77, 0], {"rounds": 4})
    again = EngineRun.from_json(run.to_json())
    assert again == run
    assert again.records[0][0].shift is True


def test_a_batch_record_with_a_missing_or_wrong_field_is_refused():
    fields = BatchRecord(0, 0, 1, 1, 0, False, 0, 0).to_json()
    with pytest.raises(KeyError):
        BatchRecord.from_json({k: v for k, v in fields.items() if k != "frames"})
    with pytest.raises(DataError, match="'correct' must be a number"):
        BatchRecord.from_json({**fields, "correct": "many"})


@pytest.mark.parametrize(
    "change",
    [{"frames": 0}, {"correct": 65}, {"uploaded": 65}, {"bytes_up": -1}, {"frames": float("nan")}],
)
def test_a_batch_record_whose_counts_do_not_add_up_is_refused(change):
    fields = {**BatchRecord(0, 0, 64, 50, 6, False, 10, 0).to_json(), **change}
    with pytest.raises(DataError):
        BatchRecord.from_json(fields)
