"""Training commands write to the project's files and never over a shipped checkpoint by accident."""

from pathlib import Path

import pytest

from cloud.shipped import SHIPPED_TEACHER, output_path
from protocol.errors import ConfigError
from simulations.cli import main


def test_the_output_is_out_else_the_projects_file(tmp_path):
    assert (
        output_path(tmp_path / "a.safetensors", tmp_path / "b", "teacher.checkpoint")
        == tmp_path / "a.safetensors"
    )
    assert output_path(None, tmp_path / "b", "teacher.checkpoint") == tmp_path / "b"
    with pytest.raises(ConfigError, match="teacher.checkpoint is empty .* pass --out FILE"):
        output_path(None, None, "teacher.checkpoint")


def test_a_shipped_checkpoint_is_replaced_only_when_asked_in_so_many_words():
    with pytest.raises(ConfigError, match="shipped with cdca.*--replace-shipped"):
        output_path(SHIPPED_TEACHER, None, "teacher.checkpoint")
    assert (
        output_path(SHIPPED_TEACHER, None, "teacher.checkpoint", replace_shipped=True)
        == SHIPPED_TEACHER
    )


@pytest.mark.parametrize(
    "command",
    [
        ["train", "teacher"],
        ["train", "student"],
        ["cloud", "distill"],
        ["train", "teacher", "--out", str(SHIPPED_TEACHER)],
    ],
)
def test_training_without_a_project_refuses_before_any_work(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDCA_PROJECT", raising=False)
    before = SHIPPED_TEACHER.stat().st_mtime_ns
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "--out" in err
    assert SHIPPED_TEACHER.stat().st_mtime_ns == before
    assert not list(Path(tmp_path).iterdir())  # nothing written


def test_the_built_in_project_names_its_shipped_checkpoints_by_absolute_path():
    from cloud import shipped
    from protocol.config.project import load_project

    named = shipped.with_shipped_checkpoints(load_project(None))
    assert named.student.checkpoint == shipped.SHIPPED_DISTILLED
    assert named.student.label_trained == shipped.SHIPPED_STUDENT
    assert named.teacher.checkpoint == shipped.SHIPPED_TEACHER
    assert all(p.is_absolute() for p in (named.student.checkpoint, named.teacher.checkpoint))


def test_a_project_on_its_own_data_is_left_as_it_is(tmp_path):
    from cloud import shipped
    from protocol.config.project import load_project

    own = load_project(
        None, assignments=["data.train=npz:/data/x.npz", "data.test=npz:/data/x.npz"]
    )
    assert shipped.with_shipped_checkpoints(own) == own


def test_a_flower_run_without_the_weights_says_how_to_name_them(monkeypatch, tmp_path):
    from protocol.config.project import load_project
    from protocol.errors import ConfigError
    from simulations.fleet import flower_server

    monkeypatch.setattr("cloud.shipped.SHIPPED_DISTILLED", tmp_path / "absent.safetensors")
    with pytest.raises(ConfigError, match="cdca config show"):
        flower_server._check_checkpoints(load_project(None))
