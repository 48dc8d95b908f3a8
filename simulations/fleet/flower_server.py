"""The Flower ServerApp: the cloud of a fleet, round by round over Flower's Message API.

Each round: devices with a new prompt get a ``train.prompt`` message; then every device
still in its stream gets ``query.step`` ("run your next batches, send your uploads"); the
replies go through ``SimulatedCloud`` (the U-VPA core), whose prompts go out next round. A
device whose reply does not come back within ``round_timeout_s`` simply does not advance:
the round goes on with the others (partial results are accepted as long as
``min_devices`` replied; otherwise the round is retried), so one slow device never
stalls the fleet. A device that fails says why in the run's log (its error reply), and
one that misses ``max_missed_rounds`` rounds in a row (dead, or failing every time) is
left out, so the cloud goes on adapting those that answer; a run left with fewer than
``min_devices`` devices raises, which Flower shows in ``flwr log`` and as a failed run.
The ClientApp is ``device.flower_client``.

``app`` is what ``flwr run`` starts. Its run config (``[tool.flwr.app.config]``, or
``--run-config``) names a cdca project file (``project``), a scenario over it
(``scenario``) and ``set`` (``KEY=VALUE`` pairs, as ``--set`` takes them); any other dotted
key (``fleet.devices = 8``) is a setting too, all read by the same loader as every cdca
command. ``cdca simulate --engine flower-sim|flower`` builds the same loop around its own
objects.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from device.flower_client import number, text, upload_from_record
from device.replay import BatchRecord
from protocol import flower_records as rec
from protocol.config.adaptation import AdaptationConfig
from protocol.config.project import ProjectConfig, load_project, write_resolved
from protocol.config.wire import settings_to_wire
from protocol.errors import CdcaError, ConfigError, DataError
from simulations.fleet.engine_run import EngineRun
from simulations.fleet.preflight import stream_length_warning
from simulations.harness.simulated_cloud import SimulatedCloud

log = logging.getLogger("cdca.flower")
app = ServerApp()
RESULTS_FILE = "flower-results.json"
PROGRESS_FILE = "flower-progress"
# run-config keys that are not settings; every other key is one
RUN_KEYS = ("project", "scenario", "set", "run-dir", "report")


def _finished(next_batch: int, total: int | None) -> bool:
    """A device is through its stream once its next batch is past its known length."""
    return total is not None and next_batch >= total


class FleetRounds:
    """The round loop over a Grid; holds what the report needs."""

    def __init__(
        self,
        project: ProjectConfig,
        adaptation: AdaptationConfig,
        teacher: SimulatedCloud,
        stream_dir: Path,
        model_dir: Path,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.fleet, self.teacher, self.progress = project.fleet, teacher, progress
        self.base: dict[str, int | float | str] = {
            rec.STREAM_DIR: str(stream_dir),
            rec.MODEL_DIR: str(model_dir),
            rec.SEED: self.fleet.seed,
            rec.BATCH_SIZE: self.fleet.batch_size,
        }
        self.settings = ConfigRecord(settings_to_wire(adaptation.device))  # type: ignore[arg-type]
        self.records: dict[int, list[BatchRecord]] = {}
        self.expected_batches: dict[int, int] = {}  # by device index, from the run's streams
        self.bytes_down: dict[int, int] = {}
        self.rounds = self.partial_rounds = self.refused_prompts = self.refused_uploads = 0
        self.refused_records = 0
        self.missed: dict[int, int] = {}  # rounds missed in a row, per node
        self.reasons: dict[int, str] = {}  # the last error a node replied with
        self.dropped: dict[int, str] = {}  # nodes left out of the run, and why

    def run(self, grid: Grid) -> EngineRun:
        """Until every device has finished its stream; returns the run, in device order."""
        nodes = self._wait_for_nodes(grid)
        next_batch = dict.fromkeys(nodes, 0)
        total: dict[int, int | None] = dict.fromkeys(nodes, None)
        index: dict[int, int] = {}
        pending: dict[int, tuple[dict[str, np.ndarray], int]] = {}

        def active() -> list[int]:  # still in their streams, not left out
            return [
                n for n in nodes if n not in self.dropped and not _finished(next_batch[n], total[n])
            ]

        while running := active():
            self._deliver(grid, pending, index)
            replies = self._query(grid, running, next_batch)
            for node, reply in replies.items():
                device = reply.content.config_records[rec.DEVICE]
                index.setdefault(node, int(text(device, "device-id").split("-")[-1]))
                if total[node] is None:
                    total[node] = batches = number(device, "batches")
                    self._check_length(index[node], batches)
            # in device order, as the in-process engine does: the environment bank and the
            # shared prompt see the same sequence whatever order the replies came back in
            for node in sorted(replies, key=index.__getitem__):
                next_batch[node] = self._ingest(
                    node, index[node], replies[node], next_batch[node], pending
                )
            self.rounds += 1
        order = sorted(index, key=index.__getitem__)
        return EngineRun(
            [self.records.get(index[n], []) for n in order],
            [self.bytes_down.get(index[n], 0) for n in order],
            {
                **self.teacher.cloud.stats(),
                "rounds": self.rounds,
                "partial_rounds": self.partial_rounds,
                "refused_prompts": self.refused_prompts,
                "refused_uploads": self.refused_uploads,
                "refused_records": self.refused_records,
                "dropped_devices": {str(n): why for n, why in self.dropped.items()},
            },
        )

    def _check_length(self, i: int, batches: int) -> None:
        """Say once when a device's stream is not the one the run's settings describe."""
        if i in self.expected_batches:
            warning = stream_length_warning(f"device-{i}", batches, self.expected_batches[i])
            if warning:
                log.warning("%s", warning)

    def _wait_for_nodes(self, grid: Grid, timeout: float = 300.0) -> list[int]:
        deadline = time.monotonic() + timeout
        wanted = self.fleet.devices
        while len(nodes := sorted(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise CdcaError(
                    f"only {len(nodes)} of {wanted} Flower nodes connected in {timeout:.0f} s"
                )
            time.sleep(0.5)
        return nodes[:wanted]

    def _deliver(
        self,
        grid: Grid,
        pending: dict[int, tuple[dict[str, np.ndarray], int]],
        index: dict[int, int],
    ) -> None:
        messages = []
        for node, (parts, version) in pending.items():
            content = RecordDict(
                {
                    rec.PROMPT: ArrayRecord(
                        array_dict={k: Array(np.asarray(v)) for k, v in parts.items()}
                    ),
                    rec.PROMPT_INFO: ConfigRecord({"version": version}),
                    rec.STEP: ConfigRecord({**self.base, rec.DEVICE_INDEX: index[node]}),
                    rec.SETTINGS: self.settings,
                }
            )
            messages.append(Message(content, dst_node_id=node, message_type=rec.TRAIN_PROMPT))
        pending.clear()
        for reply in grid.send_and_receive(messages, timeout=self.fleet.round_timeout_s):
            if not reply.has_content():
                continue
            node = reply.metadata.src_node_id
            if rec.REFUSED in reply.content.config_records:
                self.refused_prompts += 1
                log.warning(
                    "node %d refused a prompt: %s",
                    node,
                    reply.content.config_records[rec.REFUSED]["reason"],
                )
                continue
            sent = number(reply.content.config_records[rec.APPLIED], "bytes")
            self.bytes_down[index[node]] = self.bytes_down.get(index[node], 0) + sent

    def _query(
        self, grid: Grid, nodes: list[int], next_batch: dict[int, int]
    ) -> dict[int, Message]:
        k = self.fleet.batches_per_round
        straggle = {
            rec.SLOW_DEVICE: self.fleet.slow_device,
            rec.SLOW_DELAY_S: self.fleet.slow_delay_s,
            rec.SLOW: int(self.rounds < self.fleet.slow_rounds),
        }
        messages = [
            Message(
                RecordDict(
                    {
                        rec.STEP: ConfigRecord(
                            {**self.base, **straggle, rec.COUNT: k, rec.FIRST_BATCH: next_batch[n]}
                        ),
                        rec.SETTINGS: self.settings,
                    }
                ),
                dst_node_id=n,
                message_type=rec.QUERY_STEP,
            )
            for n in nodes
        ]
        replies = {}
        for reply in grid.send_and_receive(messages, timeout=self.fleet.round_timeout_s):
            node = reply.metadata.src_node_id
            if reply.has_content():
                replies[node] = reply
            elif reply.has_error():  # the device failed: say why, once per new reason
                reason = str(reply.error.reason)[:500]
                if self.reasons.get(node) != reason:
                    log.error("round %d: node %d failed: %s", self.rounds, node, reason)
                self.reasons[node] = reason
        self._count_missed(nodes, replies)
        if len(replies) < len(nodes):
            self.partial_rounds += 1
            log.warning(
                "round %d: %d of %d devices replied in time", self.rounds, len(replies), len(nodes)
            )
        if len(replies) < min(self.fleet.min_devices, len(nodes)):
            log.warning(
                "round %d: fewer than min_devices=%d replies; retrying",
                self.rounds,
                self.fleet.min_devices,
            )
            return {}
        return replies

    def _count_missed(self, nodes: list[int], replies: dict[int, Message]) -> None:
        """Leave out nodes that missed too many rounds in a row; fail when too few are left."""
        for node in nodes:
            self.missed[node] = 0 if node in replies else self.missed.get(node, 0) + 1
            if self.missed[node] >= self.fleet.max_missed_rounds:
                why = self.reasons.get(node, "no reply in time")
                self.dropped[node] = why
                log.error(
                    "node %d missed %d rounds in a row (%s): the run goes on without it",
                    node,
                    self.missed[node],
                    why,
                )
        live = len(self.missed) - len(self.dropped)
        if self.dropped and live < self.fleet.min_devices:
            reasons = "; ".join(f"node {n}: {why}" for n, why in self.dropped.items())
            raise CdcaError(
                f"only {live} device(s) still answer, fewer than fleet.min_devices="
                f"{self.fleet.min_devices}; the run stops ({reasons})"
            )

    def _ingest(
        self,
        node: int,
        i: int,
        reply: Message,
        first: int,
        pending: dict[int, tuple[dict[str, np.ndarray], int]],
    ) -> int:
        content = reply.content
        batch = first
        while rec.batch_record(batch) in content.config_records:
            record = self._record(node, content.config_records[rec.batch_record(batch)], batch)
            if record is not None:
                self.records.setdefault(i, []).append(record)
                if self.progress:
                    self.progress(record.frames)
                if rec.upload_record(batch) in content.array_records:
                    upload = content.array_records[rec.upload_record(batch)]
                    prompt = self._learn(node, i, upload, batch)
                    if prompt is not None:
                        pending[node] = prompt
            batch += 1
        return batch

    def _record(self, node: int, record: ConfigRecord, batch: int) -> BatchRecord | None:
        """One batch's outcome; a malformed one costs that batch (and its upload), not the run."""
        try:
            return BatchRecord.from_json(record)
        except (DataError, KeyError) as err:
            self.refused_records += 1
            log.warning("node %d: record of batch %d refused: %s", node, batch, err)
            return None

    def _learn(
        self, node: int, i: int, upload: ArrayRecord, batch: int
    ) -> tuple[dict[str, np.ndarray], int] | None:
        """The cloud's prompt from one upload; a bad upload costs that upload, not the run."""
        try:
            return self.teacher.ingest(f"device-{i}", upload_from_record(upload))
        except (CdcaError, KeyError, ValueError, TypeError, RuntimeError) as err:
            self.refused_uploads += 1
            log.warning("node %d: upload of batch %d refused: %s", node, batch, err)
            return None


def _check_checkpoints(project: ProjectConfig) -> None:
    """Fail with what to do when the bundle Flower runs from lacks the project's weights."""
    from cloud.shipped import builtin_teacher, distilled_student

    # the files load_cloud_models will read, by the same rules
    paths = [distilled_student(project), builtin_teacher(project.teacher)]
    missing = [str(p) for p in paths if p is not None and not p.is_file()]
    if missing:
        raise ConfigError(
            f"the project's checkpoints are not on this machine: {', '.join(missing)}. Flower "
            "runs the app from a bundle without cdca's weights, so name them by absolute path: "
            "write the project with `cdca config show > /abs/path/project.toml` and pass "
            "--run-config \"project='/abs/path/project.toml'\" (a project's own checkpoints "
            "must exist: `cdca cloud distill`, `cdca train teacher`)"
        )


def _project(config: Mapping[str, object]) -> ProjectConfig:
    """The run config's project, scenario and settings, checked, with the engine named."""
    from simulations.fleet.scenario import find_scenario

    scenario = str(config.get("scenario", ""))
    project = load_project(
        str(config.get("project", "")) or None,
        overlays=[find_scenario(scenario)] if scenario else [],
        assignments=str(config.get("set", "")).split(),
        dotted={k: v for k, v in config.items() if k not in RUN_KEYS},
    )
    _check_checkpoints(project)
    return replace(project, fleet=replace(project.fleet, engine="flower"))


def _progress_file(run_dir: Path) -> Callable[[int], None]:
    """Frames done so far into a file (`cdca simulate --engine flower` polls it)."""
    done = [0]

    def progress(frames: int) -> None:
        done[0] += frames
        (run_dir / PROGRESS_FILE).write_text(str(done[0]))

    return progress


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run``: the project from the run config; results and the report into ``run-dir``."""
    from cloud.server.models import load_cloud_models
    from simulations.fleet.command import report_flower_run
    from simulations.fleet.preflight import adaptation_warnings
    from simulations.fleet.stream_files import write_streams
    from simulations.harness.memory import PeakMemory

    started = time.perf_counter()
    config = dict(context.run_config)
    run_dir = Path(str(config.get("run-dir", "runs/flower")))
    project = _project(config)
    report = bool(config.get("report", True))  # `cdca simulate` writes its own, with every engine's
    run_dir.mkdir(parents=True, exist_ok=True)
    if report:  # beside the report; a `cdca simulate` run folder keeps the file simulate wrote
        write_resolved(project, run_dir, "this Flower run")
    for warning in adaptation_warnings(project):
        log.warning("%s", warning)
    cloud_models = load_cloud_models(project, run_dir)
    _, specs = write_streams(project, run_dir / "streams")
    rounds = FleetRounds(
        project,
        project.adaptation,
        SimulatedCloud.build(cloud_models),
        run_dir / "streams",
        cloud_models.served.folder,
        _progress_file(run_dir),
    )
    rounds.expected_batches = {i: spec.num_batches() for i, spec in enumerate(specs)}
    with PeakMemory() as memory:
        results = rounds.run(grid)
        (run_dir / RESULTS_FILE).write_text(json.dumps(results.to_json()) + "\n")
        log.info("wrote %s", run_dir / RESULTS_FILE)
        if report:
            names = list(cloud_models.served.manifest.class_names)
            paths = report_flower_run(project, specs, results, run_dir, names, started, memory)
            log.info("wrote %s", paths["report"])
