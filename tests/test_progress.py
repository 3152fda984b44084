"""Tests of npugen.sim.progress: the benchmark commands' progress bar."""

import pytest

from npugen.sim.progress import progress_steps


def test_steps_are_shown_in_order(capsys):
    with progress_steps(["build model", "simulate"], True) as advance:
        assert "build model:   0%" in capsys.readouterr().err
        advance()
        assert "simulate:  50%" in capsys.readouterr().err
        advance()
    # Closed with leave=False: the line is cleared at the end.
    assert capsys.readouterr().err.endswith("\r")


def test_hidden_when_not_asked_or_not_a_terminal(capsys):
    with progress_steps(["compile", "build", "simulate"], False) as advance:
        for _ in range(3):
            advance()
    with progress_steps(["build"]) as advance:     # stderr is captured: not a terminal
        advance()
    assert capsys.readouterr().err == ""


def test_bar_is_closed_on_errors(capsys):
    with pytest.raises(RuntimeError, match=r"^no model$"):
        with progress_steps(["build model", "simulate"], True):
            raise RuntimeError("no model")
    # Closed with leave=False: the line is cleared at the end.
    assert capsys.readouterr().err.endswith("\r")


def test_needs_a_step():
    with pytest.raises(ValueError, match=r"^descriptions must name at least one step, not \[\]$"):
        with progress_steps([], True):
            pass
