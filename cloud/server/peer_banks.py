"""``PeerBanks``: which version of every device's prompt bank each Ray actor holds.

An actor fits only its own devices, but the shared prompt a device starts from counts the
whole fleet, so each actor keeps a copy of the other devices' banks. Sending every bank
with every pass cost about 40 KB per device per pass (fine at 64 devices, a waste at
1,024); this sends a bank only to the actors whose copy is older, and tells them which
devices are gone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from cloud.adaptation.prompt_bank import PromptBank


class PeerBanks:
    """Bank versions: the server's, and the one each actor was last sent."""

    def __init__(self) -> None:
        self.versions: Counter[str] = Counter()  # device -> how often its bank changed
        self.held: dict[str, dict[str, int]] = {}  # actor -> device -> the version it holds

    def changed(self, device_id: str) -> None:
        """The server's bank of ``device_id`` changed (learned, replaced or forgotten)."""
        self.versions[device_id] += 1

    def update_for(
        self, actor: str, banks: Mapping[str, PromptBank], skip: Iterable[str] = ()
    ) -> tuple[dict[str, PromptBank], list[str]]:
        """What ``actor`` needs to hold ``banks``: the banks newer than its copies, and the gone devices.

        ``skip``: devices whose banks the actor gets another way (its pass's own devices).
        Recorded as sent: call once per message actually sent.
        """
        held = self.held.setdefault(actor, {})
        skipped = set(skip)
        send = {
            d: bank
            for d, bank in banks.items()
            if d not in skipped and held.get(d) != self.versions[d]
        }
        gone = [d for d in held if d not in banks]
        for d in send:
            held[d] = self.versions[d]
        for d in gone:
            del held[d]
        return send, gone

    def lost(self, actor: str) -> None:
        """``actor`` died: a new one starts with no copies."""
        self.held.pop(actor, None)
