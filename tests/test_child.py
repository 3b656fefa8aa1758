"""The forked worker process (taskmaster.local.child): exit codes, the sentinel, the pipe."""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from taskmaster.local.child import Child, Conn
from taskmaster.local.wire import _Frames


def _exit_with(code: object) -> None:
    raise SystemExit(code)


def _raise() -> None:
    raise ValueError("boom in the child")


def _sleep() -> None:
    time.sleep(60)


def _read_stdin(path: str) -> None:
    Path(path).write_text(repr(sys.stdin.read()))


def _send(conn: Conn, sizes: list[int]) -> None:
    for size in sizes:
        conn.send_bytes(bytes([size % 251]) * size)


def _started(target: object, *args: object) -> Child:
    child = Child(target, args)  # type: ignore[arg-type]
    child.start()
    return child


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("code", "expected"), [(None, 0), (3, 3), ("a message", 1)])
def test_sys_exit_gives_the_exit_code(code: object, expected: int) -> None:
    child = _started(_exit_with, code)
    child.join()
    assert child.exitcode == expected
    assert not child.is_alive()
    child.close()


@pytest.mark.timeout(20)
def test_an_exception_exits_1_with_its_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    child = _started(_raise)
    child.join()
    assert child.exitcode == 1
    assert "ValueError: boom in the child" in capfd.readouterr().err
    child.close()


@pytest.mark.timeout(20)
def test_the_sentinel_reads_eof_when_it_is_killed_and_join_waits_no_longer() -> None:
    child = _started(_sleep)
    assert child.pid is not None
    try:
        poller = select.poll()
        poller.register(child.sentinel, select.POLLIN)
        assert poller.poll(100) == []  # alive: nothing to read
        assert child.is_alive() and child.exitcode is None
        child.join(timeout=0.1)  # times out, still alive
        assert child.is_alive()
    finally:
        os.kill(child.pid, signal.SIGKILL)  # also when an assertion above failed
    assert poller.poll(10_000), "the sentinel never reported the death"
    assert os.read(child.sentinel, 1) == b""
    child.join(timeout=5)
    assert child.exitcode == -signal.SIGKILL
    child.close()
    assert child.sentinel == -1


@pytest.mark.timeout(20)
def test_stdin_is_dev_null(tmp_path: Path) -> None:
    out = tmp_path / "stdin"
    child = _started(_read_stdin, str(out))
    child.join()
    assert child.exitcode == 0
    assert out.read_text() == "''"
    child.close()


@pytest.mark.timeout(20)
def test_frames_written_by_conn_are_read_whole_by_the_parent() -> None:
    parent, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sizes = [0, 1, 16383, 16384, 1 << 20]
    child = _started(_send, Conn(child_end), sizes)
    child_end.close()
    frames, got = _Frames(parent.fileno()), []
    while frames.read():
        got += [bytes(m) for m in frames.messages()]
    child.join()
    assert child.exitcode == 0
    assert got == [bytes([n % 251]) * n for n in sizes]
    parent.close()
    child.close()


def _put_on(q: object) -> None:
    q.put("from the child")  # type: ignore[attr-defined]


@pytest.mark.timeout(20)
def test_a_multiprocessing_queue_made_before_the_fork_works_in_the_child() -> None:
    import multiprocessing

    q = multiprocessing.get_context("fork").Queue()
    q.put("from the parent")  # its feeder thread now runs in the parent
    assert q.get(timeout=5) == "from the parent"
    child = _started(_put_on, q)
    child.join(timeout=10)
    assert child.exitcode == 0
    assert q.get(timeout=5) == "from the child"
    child.close()
    q.close()
    q.join_thread()
