"""The local wire: how the parent and a forked worker frame their messages.

Every message is one frame as ``Connection.send_bytes`` frames it (a 4-byte size, or -1
and an 8-byte size from 2 GiB). The parent sends batch headers (the payload following in
the frame, or waiting in the worker's shared-memory :class:`Ring`) and a STOP; the worker
sends pickled events, or a 17-byte DONE for a batch done without failures.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
from collections.abc import Iterator
from typing import cast

from taskmaster.core.events import BatchDone, Stop, TaskSent
from taskmaster.record import record
from taskmaster.store import codec

# The parent's messages, each one frame as ``Connection.send_bytes`` frames it: a batch is
# this header, then its payload in the same frame unless the payload waits in the worker's
# ring (``slot`` >= 0); a lone STOP byte tells the worker to finish.
TASK_HEAD = struct.Struct("!cQQQBiQ")  # b"T", task id, first seq, count, codec, slot, size
INLINE = -1  # the slot of a payload that follows its header in the frame
STOP = b"S"
# A worker's messages are pickled events, except the common one, a batch done without
# failures: this struct (a pickle never starts with its tag).
DONE = struct.Struct("!cQd")  # b"D", task id, seconds
DONE_TAG = b"D"


def parse_result(data: bytes | bytearray) -> object:
    if data[:1] == DONE_TAG:
        _, task_id, elapsed = DONE.unpack_from(data)
        return BatchDone(task_id, elapsed)
    return pickle.loads(data)


@record(frozen=False, eq=False)
class Ring:
    """A worker's shared memory, one region per batch slot, mapped before the fork.

    The parent writes a batch's payload into a free region and sends only its header; the
    worker decodes the jobs straight from there, so the payload crosses no pipe. A region
    is free again once the batch's result came back: the worker has decoded it by then.
    """

    memory: mmap.mmap
    slot_bytes: int

    def view(self, slot: int, size: int) -> memoryview:
        start = slot * self.slot_bytes
        return memoryview(self.memory)[start : start + size]


def frame_head(size: int) -> bytes:
    """The size prefix of a frame, as ``Connection.send_bytes`` writes it."""
    if size > 0x7FFFFFFF:
        return struct.pack("!iQ", -1, size)
    return struct.pack("!i", size)


def task_frame(task: TaskSent, slot: int = INLINE) -> tuple[bytes, ...]:
    """A batch as buffers to write back to back: frame size and header (then payload)."""
    size = len(task.payload)
    head = TASK_HEAD.pack(
        b"T", task.task_id, task.first_seq, task.count, codec.NAMES.index(task.codec), slot, size
    )
    if slot != INLINE:
        return (frame_head(len(head)) + head,)
    return frame_head(len(head) + size) + head, task.payload


def parse_message(data: bytes | bytearray, ring: Ring | None) -> TaskSent | Stop:
    if data[:1] == STOP:
        return Stop()
    _, task_id, first_seq, count, name, slot, size = TASK_HEAD.unpack_from(data)
    if slot == INLINE or ring is None:
        payload = memoryview(data)[TASK_HEAD.size :]  # read in place, never copied
    else:
        payload = ring.view(slot, size)
    return TaskSent(task_id, first_seq, count, codec.NAMES[name], cast(bytes, payload))


class _Frames:
    """Messages framed as ``Connection.send_bytes`` frames them, taken as they trickle in.

    The parent writes a big batch only as fast as the pipe takes it, and may pause halfway
    (in get_jobs, say); the reader must not wait inside a message meanwhile, or it could
    not watch --job-timeout. A big message is read in place, into a buffer of its size.
    """

    BIG = 1 << 16

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.big: bytearray | None = None  # a big message being read in place
        self.filled = 0

    def read(self) -> bool:
        """Take what the pipe holds (it is readable); False at its end."""
        if self.big is not None:
            got = os.readv(self.fd, [memoryview(self.big)[self.filled :]])
            self.filled += got
            return got > 0
        chunk = os.read(self.fd, 65536)
        self.buf += chunk
        return bool(chunk)

    def messages(self) -> Iterator[bytes | bytearray]:
        if self.big is not None:
            if self.filled < len(self.big):
                return
            big, self.big = self.big, None
            yield big  # read-only from here on: decoded, never kept
        buf, pos = self.buf, 0
        try:
            while len(buf) - pos >= 4:
                (size,) = struct.unpack_from("!i", buf, pos)
                head = 4
                if size == -1:  # a message of 2 GiB or more: its size follows on 8 bytes
                    if len(buf) - pos < 12:
                        break
                    (size,) = struct.unpack_from("!Q", buf, pos + 4)
                    head = 12
                start, end = pos + head, pos + head + size
                if len(buf) < end:
                    if size >= self.BIG:
                        self.big = bytearray(size)
                        self.filled = len(buf) - start
                        self.big[: self.filled] = buf[start:]
                        pos = len(buf)
                    break
                yield buf[start:end]
                pos = end
        finally:
            del buf[:pos]
