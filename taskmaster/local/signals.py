"""Ctrl-C and SIGTERM as a count that a loop reads, never as an exception mid-step.

The handlers only count and wake the loop through a pipe (``signal.set_wakeup_fd``); the
loop decides: the first signal means "finish what is in hand", the second "stop now".
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def counting_signals(
    on_signal: Callable[[], None] | None = None,
) -> Iterator[tuple[int, Callable[[], int]]]:
    """Yields a file descriptor that becomes readable on a signal, and a function that
    returns how many SIGINT/SIGTERM arrived so far (and empties the pipe). ``on_signal``
    runs in the handler, after the count: it may raise to leave a blocking call. An
    ignored SIGINT is left ignored."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    count = [0]

    def handler(signum: int, frame: Any) -> None:
        count[0] += 1
        if on_signal is not None:
            on_signal()

    def read() -> int:
        with contextlib.suppress(BlockingIOError):
            os.read(r, 512)
        return count[0]

    # A SIGINT that was ignored when we started (``tm-run ... &`` in a script, ``nohup``)
    # stays ignored, as Python leaves it at start-up: the shell's way to keep a background
    # job out of a terminal's Ctrl-C. Taking it here would make Ctrl-C stop a run or not
    # depending on when it came. SIGTERM is always counted.
    ours = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        ours.insert(0, signal.SIGINT)
    old_wakeup = signal.set_wakeup_fd(w)
    old = {s: signal.signal(s, handler) for s in ours}
    try:
        yield r, read
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_wakeup)
        os.close(r)
        os.close(w)
