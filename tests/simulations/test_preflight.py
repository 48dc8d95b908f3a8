"""Warnings before a fleet run that could finish without adapting anything."""

from protocol.config.project import load_project
from simulations.fleet.preflight import adaptation_warnings, stream_length_warning


def project(*assignments: str):
    return load_project(None, assignments=list(assignments))


def test_the_default_fleet_reaches_the_clouds_minimum():
    assert adaptation_warnings(project()) == []


def test_stays_too_short_for_the_clouds_minimum_are_named_with_the_keys_that_fix_them():
    [warning] = adaptation_warnings(project("fleet.per_domain=64"))
    assert "at most 6 frames per environment" in warning
    for key in ("fleet.per_domain", "adaptation.device.budget", "adaptation.session.min_uploads"):
        assert key in warning


def test_pooled_uploads_count_the_whole_fleet():
    short = ("fleet.per_domain=64", "fleet.devices=4")
    assert adaptation_warnings(project(*short))
    assert adaptation_warnings(project(*short, "adaptation.sharing.pool_uploads=true")) == []


def test_a_stream_of_another_length_is_named():
    assert stream_length_warning("device-1", 3, 3) is None
    warning = stream_length_warning("device-1", 118, 3)
    assert warning is not None
    assert "118 batches" in warning
    assert "make 3" in warning
