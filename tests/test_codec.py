"""The batch codec and digests, and the local wire's messages (issue 11)."""

from __future__ import annotations

import hashlib
import mmap
import pickle
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskmaster.core.events import BatchDone, JobFailed, Stop, TaskSent
from taskmaster.local import wire
from taskmaster.store import codec


@given(st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=40))
def test_a_batch_of_bytes_comes_back_as_it_went(jobs: list[bytes]) -> None:
    name, payload = codec.encode_batch(jobs) or ("", b"")
    big = sum(map(len, jobs)) >= codec.RAW_MIN_MEAN * len(jobs)
    assert name == (codec.BYTES if big else codec.PICKLE)
    back = codec.loads(name, memoryview(payload))
    assert back == jobs and all(type(job) is bytes for job in back)


def test_a_batch_not_all_bytes_is_pickled() -> None:
    for jobs in ([b"x" * 1000, "text"], [b"x" * 1000, bytearray(b"y" * 1000)], [1, 2]):
        name, payload = codec.encode_batch(jobs) or ("", b"")
        assert name == codec.PICKLE
        assert pickle.loads(payload) == jobs


def test_a_cut_or_padded_bytes_payload_is_refused() -> None:
    _, payload = codec.encode_batch([b"a" * 600, b"b" * 700]) or ("", b"")
    for bad in (payload[:-1], payload + b"!", payload[:6]):
        with pytest.raises((ValueError, struct.error)):
            codec.split_bytes(bad)


def test_the_digest_sees_a_changed_job_and_bytes_moved_between_jobs() -> None:
    def digest(jobs: list[bytes]) -> str:
        return codec.digest((codec.encode_batch(jobs) or ("", b""))[1])

    base = [b"a" * 600, b"b" * 600]
    assert digest(base) == digest(list(base))
    assert digest(base) != digest([b"a" * 600, b"b" * 599 + b"c"])
    assert digest(base) != digest([b"a" * 599, b"a" + b"b" * 600])
    assert digest(base).startswith("x3:") and len(digest(base)) == 3 + 32


def test_same_batch_checks_a_digest_by_the_hash_that_wrote_it() -> None:
    jobs = [1, 2, 3]
    _, payload = codec.encode_batch(jobs) or ("", b"")
    assert codec.same_batch(jobs, payload, codec.digest(payload))
    blake = "b2:" + hashlib.blake2b(payload, digest_size=16).hexdigest()
    assert codec.same_batch(jobs, payload, blake)
    assert not codec.same_batch(jobs, payload, "b2:" + "0" * 32)
    assert not codec.same_batch(jobs, payload, "zz:" + "0" * 32)  # a hash we do not have
    assert not codec.same_batch(jobs, payload, None)


def test_a_checkpoint_from_before_the_new_hash_still_skips_unchanged_batches() -> None:
    """Digests written by earlier versions: 24 hex digits of SHA-1 over the batch's pickle."""
    for jobs in ([1, 2, 3], [b"z" * 5000, b"y" * 5000]):
        legacy = hashlib.sha1(pickle.dumps(list(jobs), protocol=5)).hexdigest()[:24]
        _, payload = codec.encode_batch(jobs) or ("", b"")
        assert codec.same_batch(jobs, payload, legacy)
        changed = [*jobs[:-1], jobs[0]]
        _, other = codec.encode_batch(changed) or ("", b"")
        assert not codec.same_batch(changed, other, legacy)  # it runs again, which is safe


@pytest.mark.parametrize("in_ring", [False, True], ids=["inline", "ring"])
def test_a_batch_crosses_the_local_wire_whole(in_ring: bool) -> None:
    jobs = [b"q" * 900, b"", b"r" * 2000]
    name, payload = codec.encode_batch(jobs) or ("", b"")
    task = TaskSent(7, 1000, 3, name, payload)
    ring = wire.Ring(mmap.mmap(-1, 2 * 4096), 4096)
    slot = wire.INLINE
    if in_ring:
        slot = 1
        ring.memory[4096 : 4096 + len(payload)] = payload
    parts = wire.task_frame(task, slot)
    frame = b"".join(parts)
    (size,) = struct.unpack_from("!i", frame)
    got = wire.parse_message(bytearray(frame[4:]), ring)
    assert size == len(frame) - 4
    assert len(parts) == (1 if in_ring else 2)
    assert isinstance(got, TaskSent)
    assert (got.task_id, got.first_seq, got.count, got.codec) == (7, 1000, 3, name)
    assert codec.loads(got.codec, got.payload) == jobs
    assert isinstance(wire.parse_message(wire.STOP, ring), Stop)


def test_results_cross_back_whole() -> None:
    done = BatchDone(3, 0.25)
    assert wire.parse_result(wire.DONE.pack(wire.DONE_TAG, 3, 0.25)) == done
    failed = BatchDone(4, 0.5, (JobFailed(1, "ValueError: x", "tb"),))
    assert wire.parse_result(pickle.dumps(failed, protocol=5)) == failed
