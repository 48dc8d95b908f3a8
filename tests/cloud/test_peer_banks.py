"""What a Ray actor is sent of the other devices' prompt banks: only what changed since its last pass."""

import torch

from cloud.adaptation.prompt_bank import PromptBank
from cloud.server.peer_banks import PeerBanks


def bank(value: float) -> PromptBank:
    made = PromptBank({"norm_affine": torch.zeros(2, 4)})
    made.accept({"norm_affine": torch.full((2, 4), value)})
    return made


class ActorCopy:
    """What an actor does with an update: ``AdaptationActor.ingest``'s handling of peers."""

    def __init__(self) -> None:
        self.peers: dict[str, PromptBank] = {}

    def apply(self, update: tuple[dict[str, PromptBank], list[str]]) -> None:
        send, gone = update
        self.peers.update(send)
        for device_id in gone:
            self.peers.pop(device_id, None)


def test_an_actor_gets_each_bank_once_then_only_the_changed_ones_and_the_gone_devices():
    versions = PeerBanks()
    server = {d: bank(i) for i, d in enumerate(("a", "b", "c"))}
    copy = ActorCopy()

    first = versions.update_for("w0", server, skip={"c"})  # c is in the actor's own pass
    assert sorted(first[0]) == ["a", "b"]
    assert first[1] == []
    copy.apply(first)
    assert versions.update_for("w0", server) == ({"c": server["c"]}, [])  # c was skipped before
    copy.apply(({"c": server["c"]}, []))
    assert versions.update_for("w0", server) == ({}, [])  # nothing changed: nothing sent

    server["b"] = bank(9.0)  # the actor holding b learned a new prompt
    versions.changed("b")
    del server["a"]  # a was forgotten
    versions.changed("a")
    update = versions.update_for("w0", server)
    assert update == ({"b": server["b"]}, ["a"])
    copy.apply(update)
    assert copy.peers == server  # the same objects the server holds, no more

    assert sorted(versions.update_for("w1", server)[0]) == ["b", "c"]  # another actor: all
    versions.lost("w0")  # died: its replacement holds nothing
    assert sorted(versions.update_for("w0", server)[0]) == ["b", "c"]


def test_a_device_enrolled_again_under_a_forgotten_name_is_sent_again():
    versions = PeerBanks()
    server = {"cam": bank(1.0)}
    versions.update_for("w0", server)
    versions.changed("cam")  # forgotten (RayWorkers.forget) ...
    server["cam"] = bank(0.0)  # ... and back, with a fresh bank, before w0's next pass
    assert versions.update_for("w0", server) == ({"cam": server["cam"]}, [])
