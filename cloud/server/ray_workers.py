"""``RayWorkers``: the server's fits on Ray actors, on this machine or a cluster.

``cdca cloud serve --ray local --workers 2`` starts a local Ray with two adaptation actors;
``--ray auto`` (or an address) joins a cluster started with ``ray start --head`` and
``ray start --address``. The server keeps the gRPC front-end, the durable inbox, the
registry and everything it persists; actors only compute.

- **Stable assignment.** Each device lives on one actor, chosen by rendezvous hashing over
  the live actors (Thaler and Ravishankar, "Using name-based mappings to increase hit
  rates", IEEE/ACM ToN 1998), so a device's buffer stays where its batches go and an
  actor's death moves only its own devices.
- **A dead actor.** Its part of a pass is run again on the survivors (a fresh actor when
  none is left), from the prompt banks the server holds: the batches were still in the
  inbox (a batch leaves it only after its pass), so no acknowledged sample is lost; the
  in-memory buffers of the moved devices start again, as after a server restart.
- **Fleet-wide state stays the server's.** The server's own ``FleetCloud`` (the mirror:
  sessions hold banks, never fit) keeps every device's prompt bank and the environment
  bank, and persists them as without Ray. With each pass an actor gets the banks of the
  devices new to it, the other devices' banks that changed since it last saw them (so the
  shared prompt counts the whole fleet: ``cloud.server.peer_banks``) and the environment
  bank when it changed; it returns its devices' banks and the environments its devices
  left, which the server records in order.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from cloud.adaptation.environments import EnvironmentBank
from cloud.adaptation.fleet import DeviceBatch, FleetCloud
from cloud.adaptation.prompt_bank import Prompt, PromptBank
from cloud.adaptation.vplu import FitCancelled
from cloud.server.models import CloudModels
from cloud.server.peer_banks import PeerBanks
from protocol.errors import CdcaError, ConfigError

log = logging.getLogger("cdca.cloud")
Outcome = Prompt | None | CdcaError


class RecordingBank(EnvironmentBank):
    """An environment bank that also keeps every ``record`` call, for the server to replay."""

    def __init__(self, bank: EnvironmentBank) -> None:  # noqa: D107 (takes over ``bank``)
        self.__dict__.update(bank.__dict__)
        self.log: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def record(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102 (EnvironmentBank.record)
        self.log.append((args, kwargs))
        super().record(*args, **kwargs)


@dataclass
class ActorReply:
    """What one actor's part of a pass returns."""

    outcomes: list[Outcome]
    banks: dict[str, PromptBank]
    records: list[tuple[tuple[Any, ...], dict[str, Any]]]
    fits: int
    device_fits: int
    rejected_fits: int
    buffered: dict[str, int] = field(default_factory=dict)


class AdaptationActor:
    """One Ray actor: a ``FleetCloud`` for the devices assigned to it."""

    def __init__(self, cloud_models: CloudModels, threads: int) -> None:  # noqa: D107
        torch.set_num_threads(threads)
        self.fleet = cloud_models.new_fleet()
        self.fleet.environments = RecordingBank(self.fleet.environments)

    def pid(self) -> int:
        """This actor's process id (tests kill it)."""
        return os.getpid()

    def ingest(
        self,
        batches: list[DeviceBatch],
        seed: dict[str, PromptBank],
        peers: dict[str, PromptBank],
        gone: list[str],
        environments: EnvironmentBank | None,
    ) -> ActorReply:
        """``FleetCloud.ingest_many`` on this actor's devices, after taking the server's state.

        ``peers``: other devices' banks that changed since this actor's last pass; ``gone``:
        devices whose banks it should drop.
        """
        fleet = self.fleet
        for device_id, bank in seed.items():  # new here: start from the server's bank
            fleet.sessions.pop(device_id, None)
            fleet.stays.pop(device_id, None)
            fleet.session(device_id, bank)
        fleet.peers.update(peers)
        for device_id in gone:
            fleet.peers.pop(device_id, None)
        if environments is not None:  # another actor's devices changed it
            fleet.environments = RecordingBank(environments)
        recording = fleet.environments
        assert isinstance(recording, RecordingBank)
        recording.log = []
        fits, device_fits, rejected = fleet.fits, fleet.device_fits, fleet.rejected_fits
        outcomes = fleet.ingest_many(batches)
        mine = [b.device_id for b in batches if b.device_id in fleet.sessions]
        return ActorReply(
            outcomes,
            {d: fleet.sessions[d].bank for d in mine},
            recording.log,
            fleet.fits - fits,
            fleet.device_fits - device_fits,
            fleet.rejected_fits - rejected,
            {d: len(fleet.sessions[d].buffer) for d in mine},
        )

    def forget(self, device_id: str) -> None:
        """Drop a device's session here (the server forgets the rest)."""
        self.fleet.forget(device_id)

    def devices(self) -> list[str]:
        """The devices whose sessions live here."""
        return sorted(self.fleet.sessions)


class RayWorkers:
    """The actors, which device lives where, and one pass spread over them.

    Args:
        cloud_models: what each actor fits with (sent once through Ray's object store).
        mirror: the server's ``FleetCloud``; it holds every bank and the environment bank.
        workers: actors to start.
        address: ``local`` (a Ray of this machine's cores, started here) or an existing
            cluster's (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``).
    """

    def __init__(
        self, cloud_models: CloudModels, mirror: FleetCloud, workers: int, address: str
    ) -> None:
        try:
            import ray
        except ImportError as err:
            raise ConfigError(
                "server.ray_address needs Ray: pip install 'cdca[cloud,flower]' (Flower's "
                "simulation extra brings it) or pip install ray"
            ) from err
        if workers < 1:
            raise ConfigError(f"server.ray_workers must be >= 1, got {workers}")
        self.ray = ray
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            ray.init(
                address=None if address == "local" else address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        self.mirror = mirror
        self.threads = max(1, int(ray.available_resources().get("CPU", 1)) // workers)
        # Ray hides GPUs from actors that ask for none: give each a share when fits may use one
        gpus = ray.available_resources().get("GPU", 0.0)
        wants_gpu = gpus > 0 and cloud_models.adaptation.fit.device != "cpu"
        share = min(1.0, gpus / workers) if wants_gpu else 0.0
        self.remote = ray.remote(num_cpus=0, num_gpus=share)(AdaptationActor)
        self.models = ray.put(cloud_models)
        self.actors: dict[str, Any] = {}
        self.prefix = f"cdca-{os.getpid()}-{id(self):x}"  # names unique in a shared cluster
        self.spawned = 0
        for _ in range(workers):
            self._spawn()
        self.placed: dict[str, str] = {}  # device -> the actor holding its session
        self.sent_environments: dict[str, int] = {}  # actor -> the bank version it holds
        self.peer_banks = PeerBanks()  # which devices' banks each actor holds, and how new
        self.buffered: dict[str, int] = {}  # device -> uploads in its buffer (for logs)
        self.rejected_fits = 0  # fits the actors' guards refused
        self.stopping = False
        log.info("adaptation on Ray: %d workers (%s)", workers, address)

    def owner(self, device_id: str) -> str:
        """The live actor a device's batches go to (rendezvous hashing)."""
        return max(self.actors, key=lambda name: _score(device_id, name))

    def ingest_many(self, batches: list[DeviceBatch]) -> list[Outcome]:
        """One pass over the actors; the mirror takes what they learned."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(batches):
            groups[self.owner(item.device_id)].append(i)
        calls = {name: self._call(name, [batches[i] for i in idx]) for name, idx in groups.items()}
        outcomes: list[Outcome] = [None] * len(batches)
        again: list[int] = []
        for name, ref in calls.items():
            try:
                reply = self.ray.get(ref)
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError):
                if self.stopping:
                    raise FitCancelled("the server is stopping") from None
                self._lost(name)
                again += groups[name]
                continue
            except Exception:
                self.peer_banks.lost(name)  # unsure what it took: send it every bank next time
                raise
            self._take(name, reply)
            for i, outcome in zip(groups[name], reply.outcomes, strict=True):
                outcomes[i] = outcome
        if again:  # the dead actor's devices, on the survivors
            for i, outcome in zip(
                again, self.ingest_many([batches[i] for i in again]), strict=True
            ):
                outcomes[i] = outcome
        return outcomes

    def devices_per_worker(self) -> dict[str, int]:
        """How many devices each live actor holds."""
        counts = dict.fromkeys(self.actors, 0)
        for name in list(self.placed.values()):  # one C-level copy: a pass may be placing
            if name in counts:
                counts[name] += 1
        return counts

    def buffered_uploads(self, device_id: str) -> int:
        """Uploads in the device's buffer on its actor, as of the last pass."""
        return self.buffered.get(device_id, 0)

    def forget(self, device_id: str) -> None:
        """Drop a revoked device's session on the actor that holds it."""
        self.buffered.pop(device_id, None)
        self.peer_banks.changed(device_id)  # a device enrolled again under the name starts anew
        name = self.placed.pop(device_id, None)
        if name in self.actors:
            self.actors[name].forget.remote(device_id)

    def close(self) -> None:
        """Stop every actor (and the local Ray this server started)."""
        self.stopping = True
        for actor in self.actors.values():
            self.ray.kill(actor)
        if self.started_ray:
            self.ray.shutdown()

    def _call(self, name: str, batches: list[DeviceBatch]) -> Any:
        mirror = self.mirror
        devices = {b.device_id for b in batches}
        seed = {
            d: mirror.sessions[d].bank
            for d in devices
            if self.placed.get(d) != name and d in mirror.sessions
        }
        banks = {d: s.bank for d, s in mirror.sessions.items()}
        peers, gone = self.peer_banks.update_for(name, banks, skip=devices)
        version = mirror.environments.changes
        environments = None if self.sent_environments.get(name) == version else mirror.environments
        self.sent_environments[name] = version
        for d in devices:
            self.placed[d] = name
        return self.actors[name].ingest.remote(batches, seed, peers, gone, environments)

    def _take(self, name: str, reply: ActorReply) -> None:
        mirror = self.mirror
        for device_id, bank in reply.banks.items():
            mirror.session(device_id).bank = bank
            self.peer_banks.changed(device_id)
        for args, kwargs in reply.records:
            mirror.environments.record(*args, **kwargs)
        mirror.fits += reply.fits
        mirror.device_fits += reply.device_fits
        self.rejected_fits += reply.rejected_fits
        self.buffered.update(reply.buffered)

    def _lost(self, name: str) -> None:
        """An actor died: forget where its devices were; start one if none is left."""
        self.actors.pop(name, None)
        self.sent_environments.pop(name, None)
        self.peer_banks.lost(name)
        moved = [d for d, where in self.placed.items() if where == name]
        for device_id in moved:
            del self.placed[device_id]
        log.error(
            "adaptation worker %s died; its %d devices move to %s",
            name,
            len(moved),
            ", ".join(self.actors) or "a new worker",
        )
        if not self.actors:
            self._spawn()

    def _spawn(self) -> None:
        name = f"{self.prefix}-worker-{self.spawned}"
        self.spawned += 1
        self.actors[name] = self.remote.options(name=name, max_restarts=0).remote(
            self.models, self.threads
        )


def _score(device_id: str, actor: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{device_id}\0{actor}".encode()).digest()[:8], "big")
