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
