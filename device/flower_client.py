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

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from device.agent import DeviceAgent
from device.replay import ReplayDevice
from device.runtime import DeviceRuntime
from protocol.config.wire import settings_from_wire
from protocol.errors import CdcaError, DataError
from protocol.manifest import MANIFEST_FILE

app = ClientApp()

STATE_KEY = "cdca-device"
SETTINGS_KEY = "device-settings"  # the ConfigRecord with the project's [adaptation.device]
UPLOAD_ARRAYS = ("images", "uncertainty", "frame_ids", "predicted", "batch_stats")
_RUNTIMES: dict[str, DeviceRuntime] = {}  # one onnxruntime session per model per process


@app.query("step")
def step(message: Message, context: Context) -> Message:
    """Run the next batches of this device's stream and reply with the uploads."""
    config = message.content.config_records["step"]
    device = _device(message, context)
    content = RecordDict()
    first, count = number(config, "first-batch"), number(config, "count")
    if config.get("slow") and number(config, "slow-device", -1) == _index(config, context):
        time.sleep(float(number(config, "slow-delay-s", 0)))  # a simulated straggler
    for batch in range(first, min(first + count, device.num_batches)):
        record, fields = device.run(batch)
        content[f"batch-{batch}"] = ConfigRecord({k: int(v) for k, v in record.to_json().items()})
        if fields is not None:
            content[f"upload-{batch}"] = _upload_record(fields)
    content["device"] = ConfigRecord({"device-id": device.device_id, "batches": device.num_batches})
    _save(device, context)
    return Message(content, reply_to=message)


@app.train("prompt")
def prompt(message: Message, context: Context) -> Message:
    """Apply the prompt the cloud sent (validated; a bad one changes nothing)."""
    device = _device(message, context)
    parts = {k: v.numpy() for k, v in message.content.array_records["prompt"].items()}
    version = number(message.content.config_records["prompt-info"], "version")
    try:
        wire_bytes = device.apply(parts, version)
    except CdcaError as err:
        return Message(
            RecordDict({"refused": ConfigRecord({"reason": str(err)})}), reply_to=message
        )
    _save(device, context)
    return Message(
        RecordDict({"applied": ConfigRecord({"version": version, "bytes": wire_bytes})}),
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
    return number(context.node_config, "partition-id", number(config, "device-index", 0))


def _device(message: Message, context: Context) -> ReplayDevice:
    config = message.content.config_records["step"]
    node = context.node_config
    index = _index(config, context)
    default_stream = (
        f"{text(config, 'stream-dir')}/device-{index}.npz" if "stream" not in node else ""
    )
    stream = Path(str(node.get("stream", default_stream)))
    model_dir = str(node["model-dir"]) if "model-dir" in node else text(config, "model-dir")
    if model_dir not in _RUNTIMES:
        _RUNTIMES[model_dir] = DeviceRuntime.load(Path(model_dir) / MANIFEST_FILE, threads=1)
    runtime = _RUNTIMES[model_dir]
    runtime.reset_adaptation()
    wire = message.content.config_records.get(SETTINGS_KEY, ConfigRecord())
    settings, _ = settings_from_wire({k: str(v) for k, v in wire.items()})
    agent = DeviceAgent(runtime, settings, seed=number(config, "seed") + index)
    device = ReplayDevice(agent, stream, number(config, "batch-size"), f"device-{index}")
    if STATE_KEY in context.state.config_records:
        state = context.state.config_records[STATE_KEY]["state"]
        if isinstance(state, bytes):
            device.restore(state)
    return device


def _save(device: ReplayDevice, context: Context) -> None:
    context.state.config_records[STATE_KEY] = ConfigRecord({"state": device.state()})


def _upload_record(fields: dict[str, object]) -> ArrayRecord:
    arrays = {k: Array(np.ascontiguousarray(np.asarray(fields[k]))) for k in UPLOAD_ARRAYS}
    meta = [number(fields, "batch_id"), int(bool(fields["shift"])), number(fields, "frames_seen")]
    arrays["meta"] = Array(np.array(meta, np.int64))
    return ArrayRecord(array_dict=arrays)


def upload_fields(record: ArrayRecord) -> dict[str, object]:
    """The cloud's side of ``_upload_record``: back to the fields ``FleetTeacher.ingest`` takes."""
    fields: dict[str, object] = {k: record[k].numpy() for k in UPLOAD_ARRAYS}
    batch_id, shift, frames_seen = (int(v) for v in record["meta"].numpy())
    fields.update(batch_id=batch_id, shift=bool(shift), frames_seen=frames_seen)
    return fields
