"""Frames in-process: signatures, replays, versions, secrets, addresses, bodies."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("zmq")

from taskmaster.core.events import JobFailed  # noqa: E402
from taskmaster.errors import UsageError  # noqa: E402
from taskmaster.remote import frames as wire  # noqa: E402
from taskmaster.remote.protocol import Body, MalformedBody, fit_failures, status_of  # noqa: E402

SECRET = wire.Secret(b"0123456789abcdef0123456789abcdef", "test")
KEY = wire.frame_key(SECRET)


def sealed(
    kind: str = "status", body: dict[str, Any] | None = None, payload: bytes = b""
) -> list[bytes]:
    return wire.Sealer(KEY, "slave-1").seal(kind, "run-1", body or {"x": 1}, payload)


def test_a_sealed_frame_opens_to_what_was_sent() -> None:
    msg = wire.Opener(KEY).open(sealed("task", {"task": 7}, b"jobs"))
    assert (msg.run, msg.sender, msg.seq, msg.kind) == ("run-1", "slave-1", 1, "task")
    assert msg.body == {"task": 7} and msg.payload == b"jobs"


def test_seq_increases_per_sender() -> None:
    sealer = wire.Sealer(KEY, "s")
    seqs = [wire.Opener(KEY).open(sealer.seal("status", None)).seq for _ in range(3)]
    assert seqs == [1, 2, 3]


@pytest.mark.parametrize("part", [0, 1, 2])
def test_any_changed_byte_fails_the_signature(part: int) -> None:
    frame = sealed(payload=b"payload")
    damaged = bytearray(frame[part])
    damaged[len(damaged) // 2] ^= 1
    frame[part] = bytes(damaged)
    with pytest.raises(wire.Dropped, match="signature|not JSON"):
        wire.Opener(KEY).open(frame)


def test_bytes_cannot_slide_between_header_and_payload() -> None:
    # Whitespace after a JSON header still parses: the length prefix is what catches it.
    sig, header, payload = sealed(payload=b"  rest")
    with pytest.raises(wire.Dropped, match="signature"):
        wire.Opener(KEY).open([sig, header + b"  ", b"rest"])


def test_another_secret_fails_and_nothing_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    other = wire.frame_key(wire.Secret(b"another secret of enough bytes", "x"))
    parsed: list[bytes] = []
    monkeypatch.setattr(json, "loads", lambda data, **kw: parsed.append(data))
    with pytest.raises(wire.Dropped, match="signature"):
        wire.Opener(other).open(sealed())
    assert parsed == []


def test_a_forged_pickle_payload_is_never_unpickled(tmp_path: Path) -> None:
    bomb = tmp_path / "unpickled"

    class Bomb:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(bomb), "w"))

    header = json.dumps({"v": 1, "run": "r", "from": "m", "seq": 1, "kind": "task", "body": {}})
    frame = [os.urandom(32), header.encode(), pickle.dumps(Bomb())]
    with pytest.raises(wire.Dropped):
        wire.Opener(KEY).open(frame)
    assert not bomb.exists()


def test_no_secret_signs_with_a_public_key_that_a_secret_rejects() -> None:
    public = wire.Sealer(wire.frame_key(None), "s").seal("hello", None)
    assert wire.Opener(wire.frame_key(None)).open(public).kind == "hello"
    with pytest.raises(wire.Dropped):
        wire.Opener(KEY).open(public)


@pytest.mark.parametrize(
    "parts",
    [
        [b"one part"],
        [b"a", b"b", b"c", b"d"],
        [b"short sig", b"{}", b""],
    ],
)
def test_malformed_frames_are_dropped(parts: list[bytes]) -> None:
    with pytest.raises(wire.Dropped, match="not a taskmaster frame"):
        wire.Opener(KEY).open(parts)


def test_an_oversized_header_is_dropped_before_the_signature_is_computed() -> None:
    sig, header, payload = sealed()
    with pytest.raises(wire.Dropped, match="size"):
        wire.Opener(KEY, max_header=10).open([sig, header, payload])


def _signed(doc: object) -> list[bytes]:
    header = json.dumps(doc).encode()
    mac = wire.Sealer(KEY, "x")._mac  # the same signature a sealer makes, over any header
    return [wire._sign(mac, header, b""), header, b""]


@pytest.mark.parametrize(
    "doc",
    [
        [1, 2],
        {"v": 1, "run": None, "from": "", "seq": 1, "kind": "k", "body": {}},
        {"v": 1, "run": None, "from": "x" * 65, "seq": 1, "kind": "k", "body": {}},
        {"v": 1, "run": None, "from": "s", "seq": 0, "kind": "k", "body": {}},
        {"v": 1, "run": None, "from": "s", "seq": True, "kind": "k", "body": {}},
        {"v": 1, "run": 5, "from": "s", "seq": 1, "kind": "k", "body": {}},
        {"v": 1, "run": None, "from": "s", "seq": 1, "kind": "k", "body": []},
        {"v": 1, "from": "s", "seq": 1, "body": {}},
    ],
)
def test_signed_headers_with_bad_fields_are_dropped(doc: object) -> None:
    with pytest.raises(wire.Dropped, match="signed, but"):
        wire.Opener(KEY).open(_signed(doc))


def test_another_protocol_version_is_told_apart_after_the_signature() -> None:
    frame = wire.Sealer(KEY, "slave-9", version=2).seal("hello", None)
    with pytest.raises(wire.VersionMismatch) as info:
        wire.Opener(KEY).open(frame)
    assert info.value.version == 2 and info.value.sender == "slave-9"
    assert "protocol 2" in str(info.value)


def test_replays_and_old_seqs_are_refused() -> None:
    guard = wire.ReplayGuard()
    assert guard.fresh("a", 1) and guard.fresh("a", 2) and guard.fresh("b", 1)
    assert not guard.fresh("a", 2)
    assert not guard.fresh("a", 1)
    assert guard.fresh("a", 5)  # gaps are fine: a master numbers frames to all slaves
    assert not guard.fresh("a", 4)


def test_the_replay_guard_stays_bounded() -> None:
    guard = wire.ReplayGuard(limit=3)
    for sender in "abcd":
        guard.fresh(sender, 1)
    assert len(guard._last) == 3


# -- secrets and addresses ----------------------------------------------------------------


def test_secret_from_a_file_is_stripped_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "tm.secret"
    path.write_text("  0123456789abcdef0123\n")
    path.chmod(0o600)
    secret = wire.load_secret(str(path), {})
    assert secret is not None and secret.value == b"0123456789abcdef0123"
    assert secret.warning is None
    assert "0123456789abcdef" not in repr(secret)


def test_a_secret_file_others_can_read_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "tm.secret"
    path.write_text("0123456789abcdef0123")
    path.chmod(0o644)
    secret = wire.load_secret(str(path), {})
    assert secret is not None and secret.warning is not None and "chmod 600" in secret.warning


def test_the_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tm.secret"
    path.write_text("from-the-file-0123456789")
    secret = wire.load_secret(str(path), {wire.SECRET_ENV: "from-the-environment-0123"})
    assert secret is not None and secret.value == b"from-the-file-0123456789"


def test_no_secret_anywhere_is_none() -> None:
    assert wire.load_secret(None, {}) is None


@pytest.mark.parametrize("value", ["", "   ", "short", "fifteen bytes!!"])
def test_empty_or_short_secrets_are_refused_with_a_recipe(value: str) -> None:
    with pytest.raises(UsageError, match="at least 16") as info:
        wire.load_secret(None, {wire.SECRET_ENV: value})
    assert "secrets.token_hex" in str(info.value)
    if value.strip():
        assert value.strip() not in str(info.value)


def test_a_missing_secret_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        wire.load_secret(str(tmp_path / "nope"), {})


def test_a_binary_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tm.secret"
    path.write_bytes(b"\xff" * 32)
    with pytest.raises(UsageError, match="not text"):
        wire.load_secret(str(path), {})


def test_the_master_listens_on_loopback_without_a_secret_and_everywhere_with_one() -> None:
    assert wire.master_address(None, None) == "tcp://127.0.0.1:3050"
    assert wire.master_address(None, SECRET) == "tcp://0.0.0.0:3050"
    assert wire.master_address("tcp://10.1.2.3:9", SECRET) == "tcp://10.1.2.3:9"
    assert wire.master_address("tcp://localhost:9", None) == "tcp://localhost:9"


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:3050", "tcp://10.0.0.5:1", "tcp://host:2"])
def test_no_secret_refuses_other_addresses_and_says_how_to_make_one(address: str) -> None:
    with pytest.raises(UsageError, match="without a secret") as info:
        wire.master_address(address, None)
    assert wire.MAKE_SECRET in str(info.value)
    with pytest.raises(UsageError, match="without a secret"):
        wire.slave_address(address, None)


@pytest.mark.parametrize("address", ["127.0.0.1:3050", "ipc:///tmp/x", "tcp://host", "tcp://:5"])
def test_addresses_must_be_tcp_host_port(address: str) -> None:
    with pytest.raises(UsageError, match="tcp://HOST:PORT"):
        wire.master_address(address, SECRET)


def test_rate_limited_log_counts_what_it_holds_back() -> None:
    now = [0.0]
    lines: list[str] = []
    limited = wire.RateLimitedLog(lines.append, every=10, clock=lambda: now[0])
    for _ in range(5):
        limited("peer-a", "bad frame")
    limited("peer-b", "other")
    now[0] = 11.0
    limited("peer-a", "bad frame")
    assert lines == ["bad frame", "other", "bad frame (4 more like it not shown)"]


# -- bodies -------------------------------------------------------------------------------


def test_bodies_read_typed_fields_or_refuse() -> None:
    body = Body({"n": 3, "x": 1.5, "t": "s", "l": [1, 2], "b": True, "s": {"ack": 1}})
    assert body.integer("n") == 3 and body.number("x") == 1.5 and body.text("t") == "s"
    assert body.integers("l") == [1, 2] and body.flag("b") and body.child("s").integer("ack") == 1
    assert body.integer("missing", default=4) == 4
    for call in (
        lambda: body.integer("missing"),
        lambda: body.integer("b"),
        lambda: body.integer("t"),
        lambda: body.integers("t"),
        lambda: Body({"l": [1, "2"]}).integers("l"),
        lambda: body.flag("n"),
        lambda: body.child("n"),
        lambda: Body({"f": [[1, "e"]]}).failures("f"),
    ):
        with pytest.raises(MalformedBody):
            call()


def test_status_of_a_frame() -> None:
    assert status_of(Body({"status": {"ack": 4, "free": 2, "held": [7, 8]}})) == (4, 2, {7, 8})


def test_failures_that_would_not_fit_keep_the_tail_of_their_tracebacks() -> None:
    failures = tuple(JobFailed(i, "ValueError: x", "x" * 10_000 + "END") for i in range(100))
    fitted = fit_failures(failures, budget=100_000)
    assert len(fitted) == 100
    assert sum(len(f[1]) + len(f[2]) for f in fitted) <= 110_000
    assert all(f[2].endswith("END") for f in fitted)
    small = fit_failures(failures[:2], budget=100_000)
    assert small[0] == [0, "ValueError: x", "x" * 10_000 + "END"]
