"""lmtrain.training.signals: StopRequest turns SIGTERM/SIGINT into a request to stop after the step.

The signals are sent to this process (os.kill(os.getpid(), ...)); each test checks that StopRequest's handler
is installed before sending one, so a failure cannot kill the test run.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from lmtrain.training.signals import StopRequest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="POSIX signals")


def send(sig: int, stop: StopRequest) -> None:
    assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN, None), "no handler: not sending"
    os.kill(os.getpid(), sig)
    deadline = time.monotonic() + 5
    while stop.signal is None and time.monotonic() < deadline:  # the handler runs between bytecodes
        time.sleep(0.001)


@pytest.fixture
def saved_handlers():
    """Whatever handlers the test run had, put back whatever a failing test leaves."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield before
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_sigterm_is_a_request_not_an_exit(saved_handlers, capsys):
    with StopRequest() as stop:
        assert stop.signal is None
        send(signal.SIGTERM, stop)
        assert stop.signal == "SIGTERM"
        send(signal.SIGTERM, stop)  # a second SIGTERM asks again, it does not abort
        assert stop.signal == "SIGTERM"
    out = capsys.readouterr().out
    assert "received SIGTERM: finishing this step and saving a checkpoint" in out


def test_first_sigint_requests_the_second_aborts(saved_handlers):
    with StopRequest() as stop:
        send(signal.SIGINT, stop)
        assert stop.signal == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # interrupted by the handler's KeyboardInterrupt well before this ends


def test_sigint_after_sigterm_aborts(saved_handlers):
    with StopRequest() as stop:
        send(signal.SIGTERM, stop)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)


def test_previous_handlers_are_restored_on_exit(saved_handlers):
    received = []
    previous_term = lambda signum, frame: received.append(signum)
    signal.signal(signal.SIGTERM, previous_term)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGTERM) is not previous_term
        assert signal.getsignal(signal.SIGINT) is not saved_handlers[signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is previous_term
    assert signal.getsignal(signal.SIGINT) is saved_handlers[signal.SIGINT]
    os.kill(os.getpid(), signal.SIGTERM)  # goes to the previous handler again
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        time.sleep(0.001)
    assert received == [signal.SIGTERM] and stop.signal is None


def test_handlers_are_restored_when_the_block_raises(saved_handlers):
    with pytest.raises(RuntimeError):
        with StopRequest():
            raise RuntimeError("training failed")
    assert {sig: signal.getsignal(sig) for sig in saved_handlers} == saved_handlers


def test_outside_the_main_thread_nothing_is_installed(saved_handlers):
    errors, during = [], []

    def worker():
        try:
            with StopRequest() as stop:  # signal.signal would raise ValueError in this thread
                during.append((stop.signal, signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)))
        except BaseException as e:  # reported below
            errors.append(e)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert errors == []
    assert during == [(None, saved_handlers[signal.SIGTERM], saved_handlers[signal.SIGINT])]
    assert {sig: signal.getsignal(sig) for sig in saved_handlers} == saved_handlers
