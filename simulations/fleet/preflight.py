"""Checks before a fleet run starts: settings that would let it "succeed" without adapting anything."""

from __future__ import annotations

from protocol.config.project import ProjectConfig


def adaptation_warnings(project: ProjectConfig) -> list[str]:
    """What makes the cloud unlikely to ever send a prompt, each with the keys that fix it.

    A device uploads at most ``budget`` of the frames of each stay in one environment, and
    the cloud fits nothing for an environment until it holds ``min_uploads`` of them; with
    ``restart_on_shift`` every reported shift starts that count again. With
    ``sharing.pool_uploads`` the devices that were in an environment lend it their uploads,
    so the fleet's together count.
    """
    fleet, adaptation = project.fleet, project.adaptation
    per_stay = fleet.per_domain * adaptation.device.budget
    need = adaptation.session.min_uploads
    pooled = per_stay * fleet.devices if adaptation.sharing.pool_uploads else per_stay
    if pooled >= need:
        return []
    return [
        f"each device uploads at most {per_stay:.0f} frames per environment "
        f"(fleet.per_domain={fleet.per_domain} x adaptation.device.budget="
        f"{adaptation.device.budget}), fewer than the {need} the cloud needs before its first "
        "prompt (adaptation.session.min_uploads): the run may finish without adapting. Raise "
        "fleet.per_domain or adaptation.device.budget, or lower adaptation.session.min_uploads."
    ]


def stream_length_warning(device: str, batches: int, expected: int) -> str | None:
    """A device's stream that does not match the run's settings (e.g. a SuperNode's own file)."""
    if batches == expected:
        return None
    return (
        f"{device}'s stream has {batches} batches, the run's settings make {expected} "
        "(fleet.per_domain, fleet.corruptions, fleet.batch_size): its node config names "
        "another stream file; the run goes on with the device's own stream"
    )
