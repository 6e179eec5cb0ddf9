"""A stop (SIGINT/SIGTERM) still ends as a stop when a library swallowed or wrapped the exception its handler
raised: seen for real with onnxslim's bare `except:` around an import, an importlib weakref callback ("Exception
ignored in"), and a class body's `__set_name__` turning KeyboardInterrupt into RuntimeError."""

from __future__ import annotations

import argparse
import signal

import pytest

from accelserve import stop
from accelserve.cli import main as cli_main
from accelserve.errors import Terminated


def _command(body):  # noqa: ANN001, ANN202
    def build_parser() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser()
        parser.set_defaults(func=lambda args: body())
        return parser

    return build_parser


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_swallowed_stop_is_raised_again_when_the_command_returns(monkeypatch: pytest.MonkeyPatch, signum: int,
                                                                   code: int, capsys: pytest.CaptureFixture) -> None:
    def body() -> int:
        try:
            signal.raise_signal(signum)  # the real handler runs: records and raises
        except BaseException:  # noqa: BLE001 - what a careless library does
            pass
        return 0

    monkeypatch.setattr(cli_main, "build_parser", _command(body))
    assert cli_main.main([]) == code
    assert "stopped and cleaned up" in capsys.readouterr().err


def test_an_interrupt_wrapped_in_another_exception_is_a_stop_not_a_bug(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    def body() -> int:
        try:
            raise Terminated()
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance") from exc

    monkeypatch.setattr(cli_main, "build_parser", _command(body))
    assert cli_main.main([]) == 143
    err = capsys.readouterr().err
    assert "terminated (SIGTERM)" in err and "internal error" not in err


def test_check_raises_only_after_a_recorded_signal() -> None:
    stop.reset()
    stop.check()  # nothing recorded: nothing raised
    stop.record(signal.SIGTERM)
    with pytest.raises(Terminated):
        stop.check()
    stop.reset()
    stop.record(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
        stop.check()
    assert not isinstance(info.value, Terminated)
    stop.reset()
