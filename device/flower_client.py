"""The Flower ClientApp: a fleet device answering the cloud's rounds; no torch.

Flower is server-driven (a SuperNode pulls instructions and replies), so the cloud asks:

- ``query.step``: "run your next batches" (``first-batch``, ``count``). The device predicts
  them under its prompt, picks its uploads (UGS) and replies with one ``ArrayRecord`` per
  upload (``upload-<batch>``) and one ``ConfigRecord`` per batch (``batch-<batch>``: frames,
  correct, uploaded, shift, bytes).
- ``train.prompt``: "switch to this prompt" (an ``ArrayRecord`` ``prompt`` and its
  ``version``). A prompt that does not fit the model, or holds NaN, is refused with an
  error reply and the device keeps its last good one.

Every message also carries the project's device settings (``device-settings``: TOML
literals by key, ``protocol.config.wire``), as ``Register`` does over gRPC.

It wraps the same ``DeviceAgent`` and ``ReplayDevice`` as every other engine. Where the
stream and the model live: the node's config (``stream``, ``model-dir``, set with
``flower-supernode --node-config``) or, in simulation, the folders the cloud names in each
message with the node's ``partition-id``. The agent's state (budget, shift detector, prompt
in force) lives in ``context.state``, so it survives a fresh ClientApp process per message.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from device.agent import DeviceAgent
from device.replay import ReplayDevice
from device.runtime import DeviceRuntime
from protocol import flower_records as rec
from protocol.config.wire import settings_from_wire
from protocol.errors import CdcaError, DataError
from protocol.manifest import MANIFEST_FILE
from protocol.upload import Upload

app = ClientApp()

_RUNTIMES: dict[str, DeviceRuntime] = {}  # one onnxruntime session per model per process


@app.query("step")
def step(message: Message, context: Context) -> Message:
    """Run the next batches of this device's stream and reply with the uploads."""
    config = message.content.config_records[rec.STEP]
    device = _device(message, context)
    content = RecordDict()
    first, count = number(config, rec.FIRST_BATCH), number(config, rec.COUNT)
    if config.get(rec.SLOW) and number(config, rec.SLOW_DEVICE, -1) == _index(config, context):
        time.sleep(float(number(config, rec.SLOW_DELAY_S, 0)))  # a simulated straggler
    for batch in range(first, min(first + count, device.num_batches)):
        record, upload = device.run(batch)
        content[rec.batch_record(batch)] = ConfigRecord(
            {k: int(v) for k, v in record.to_json().items()}
        )
        if upload is not None:
            content[rec.upload_record(batch)] = upload_to_record(upload)
    content[rec.DEVICE] = ConfigRecord(
        {"device-id": device.device_id, "batches": device.num_batches}
    )
    _save(device, context)
    return Message(content, reply_to=message)


@app.train("prompt")
def prompt(message: Message, context: Context) -> Message:
    """Apply the prompt the cloud sent (validated; a bad one changes nothing)."""
    device = _device(message, context)
    parts = {k: v.numpy() for k, v in message.content.array_records[rec.PROMPT].items()}
    version = number(message.content.config_records[rec.PROMPT_INFO], "version")
    try:
        wire_bytes = device.apply(parts, version)
    except CdcaError as err:
        return Message(
            RecordDict({rec.REFUSED: ConfigRecord({"reason": str(err)})}), reply_to=message
        )
    _save(device, context)
    return Message(
        RecordDict({rec.APPLIED: ConfigRecord({"version": version, "bytes": wire_bytes})}),
        reply_to=message,
    )


def number(record: Mapping[str, object], key: str, default: int | None = None) -> int:
    """An integer field of a record, or a clear error naming the field."""
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DataError(f"message field {key!r} must be a number, got {value!r}")
    return int(value)


def text(record: Mapping[str, object], key: str) -> str:
    """A string field of a record."""
    value = record.get(key)
    if not isinstance(value, str):
        raise DataError(f"message field {key!r} must be a string, got {value!r}")
    return value


def _index(config: ConfigRecord, context: Context) -> int:
    """This device's index in the fleet: its node config, or what the cloud calls it."""
    return number(context.node_config, rec.NODE_PARTITION, number(config, rec.DEVICE_INDEX, 0))


def _device(message: Message, context: Context) -> ReplayDevice:
    config = message.content.config_records[rec.STEP]
    node = context.node_config
    index = _index(config, context)
    default_stream = (
        f"{text(config, rec.STREAM_DIR)}/device-{index}.npz" if rec.NODE_STREAM not in node else ""
    )
    stream = Path(str(node.get(rec.NODE_STREAM, default_stream)))
    model_dir = (
        str(node[rec.NODE_MODEL_DIR]) if rec.NODE_MODEL_DIR in node else text(config, rec.MODEL_DIR)
    )
    if model_dir not in _RUNTIMES:
        _RUNTIMES[model_dir] = DeviceRuntime.load(Path(model_dir) / MANIFEST_FILE, threads=1)
    runtime = _RUNTIMES[model_dir]
    runtime.reset_adaptation()
    wire = message.content.config_records.get(rec.SETTINGS, ConfigRecord())
    settings, _ = settings_from_wire({k: str(v) for k, v in wire.items()})
    agent = DeviceAgent(runtime, settings, seed=number(config, rec.SEED) + index)
    device = ReplayDevice(agent, stream, number(config, rec.BATCH_SIZE), f"device-{index}")
    if rec.STATE in context.state.config_records:
        state = context.state.config_records[rec.STATE]["state"]
        if isinstance(state, bytes):
            device.restore(state)
    return device


def _save(device: ReplayDevice, context: Context) -> None:
    context.state.config_records[rec.STATE] = ConfigRecord({"state": device.state()})


def upload_to_record(upload: Upload) -> ArrayRecord:
    """An upload as the ArrayRecord a step reply carries."""
    return ArrayRecord(array_dict={k: Array(v) for k, v in upload.arrays().items()})


def upload_from_record(record: ArrayRecord) -> Upload:
    """The cloud's side of ``upload_to_record``."""
    return Upload.from_arrays({k: record[k].numpy() for k in record})
