"""Progress off a terminal: a line per twentieth of the work, on stderr, not silence."""

from cloud.progress import PlainProgress, counted_progress, epoch_progress


def test_off_a_terminal_progress_prints_a_line_per_twentieth_on_stderr(capsys):
    with counted_progress("adapting", 1000) as advance:
        for batch in range(100):
            advance(f"tent · domain {batch // 10}", 10)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == ""  # stdout keeps what a command prints as its result
    assert len(lines) == 21  # the first batch, then one at each 5 % up to the end
    assert lines[0].startswith("tent · domain 0: 10/1000 (1 %)")
    assert lines[-1].startswith("tent · domain 9: 1000/1000 (100 %)")


def test_epoch_progress_and_an_empty_task_print_without_dividing_by_zero(capsys):
    with epoch_progress(epochs=2, steps_per_epoch=3) as advance:
        for epoch in range(2):
            for step in range(3):
                advance(epoch, step, 0.5)
    assert capsys.readouterr().err.splitlines()[-1].startswith("epoch 2/2 loss 0.500: 6/6 (100 %)")
    display = PlainProgress()
    display.update(display.add_task("nothing to do", total=0), advance=0)
    assert "nothing to do: 0/0 (0 %)" in capsys.readouterr().err
