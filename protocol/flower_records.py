"""The names in the messages cdca's Flower ServerApp and ClientApp exchange.

Both sides import these, so a renamed record cannot silently leave one side reading a key
the other no longer writes. Message types: ``QUERY_STEP`` ("run your next batches") and
``TRAIN_PROMPT`` ("switch to this prompt"); ``device/flower_client.py`` describes the
exchange.
"""

from __future__ import annotations

QUERY_STEP = "query.step"
TRAIN_PROMPT = "train.prompt"

# Records, by name (a RecordDict's keys)
STEP = "step"  # ConfigRecord: where the device's inputs are and which batches to run
SETTINGS = "device-settings"  # ConfigRecord: the project's [adaptation.device], TOML literals
PROMPT = "prompt"  # ArrayRecord: prompt parts by the device model's input name
PROMPT_INFO = "prompt-info"  # ConfigRecord: the prompt's version
DEVICE = "device"  # ConfigRecord in each step reply: the device's id and stream length
APPLIED = "applied"  # ConfigRecord: the device applied a prompt (its version, wire bytes)
REFUSED = "refused"  # ConfigRecord: the device refused a prompt (the reason)
STATE = "cdca-device"  # ConfigRecord in the node's context.state: the device's saved state

# Fields of the STEP record
STREAM_DIR = "stream-dir"
MODEL_DIR = "model-dir"
SEED = "seed"
BATCH_SIZE = "batch-size"
DEVICE_INDEX = "device-index"
FIRST_BATCH = "first-batch"
COUNT = "count"
SLOW = "slow"  # a simulated straggler: 1 while the fleet's slow rounds last
SLOW_DEVICE = "slow-device"  # ... which device index sleeps
SLOW_DELAY_S = "slow-delay-s"  # ... and for how long per round

# Fields of a node's own config (``flower-supernode --node-config``)
NODE_STREAM = "stream"
NODE_MODEL_DIR = "model-dir"
NODE_PARTITION = "partition-id"


def batch_record(batch: int) -> str:
    """The ConfigRecord of one batch's outcome (frames, correct, uploaded, shift, bytes)."""
    return f"batch-{batch}"


def upload_record(batch: int) -> str:
    """The ArrayRecord of one batch's upload (``protocol.upload.Upload.arrays``)."""
    return f"upload-{batch}"
