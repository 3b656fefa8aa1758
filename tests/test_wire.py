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

SECRET = wire.Secret(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "t")
KEY = wire.frame_key(SECRET, wire.TO_SLAVE)
HEX64 = "0123456789abcdef" * 4


def opener(key: bytes = KEY, **limits: int) -> wire.Opener:
    """A slave's opener: master-to-slave frames, payloads allowed."""
    return wire.Opener(key, wire.TO_SLAVE, **{"max_payload": wire.SLAVE_MAX_FRAME, **limits})


def sealed(
    kind: str = "status", body: dict[str, Any] | None = None, payload: bytes = b""
) -> list[bytes]:
    return wire.Sealer(KEY, "slave-1", wire.TO_SLAVE).seal(kind, "run-1", body or {"x": 1}, payload)


def test_a_sealed_frame_opens_to_what_was_sent() -> None:
    msg = opener().open(sealed("task", {"task": 7}, b"jobs"))
    assert (msg.run, msg.sender, msg.seq, msg.kind) == ("run-1", "slave-1", 1, "task")
    assert msg.body == {"task": 7} and msg.payload == b"jobs"


def test_seq_increases_per_sender() -> None:
    sealer = wire.Sealer(KEY, "s", wire.TO_SLAVE)
    seqs = [opener().open(sealer.seal("status", None)).seq for _ in range(3)]
    assert seqs == [1, 2, 3]


@pytest.mark.parametrize("part", [0, 1, 2])
def test_any_changed_byte_fails_the_signature(part: int) -> None:
    frame = sealed(payload=b"payload")
    damaged = bytearray(frame[part])
    damaged[len(damaged) // 2] ^= 1
    frame[part] = bytes(damaged)
    with pytest.raises(wire.Dropped, match="signature|not JSON"):
        opener().open(frame)


def test_bytes_cannot_slide_between_header_and_payload() -> None:
    # Whitespace after a JSON header still parses: the length prefix is what catches it.
    sig, header, payload = sealed(payload=b"  rest")
    with pytest.raises(wire.Dropped, match="signature"):
        opener().open([sig, header + b"  ", b"rest"])


def test_another_secret_fails_and_nothing_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    other = wire.frame_key(wire.Secret(b"another secret of enough bytes, 32+", "x"), wire.TO_SLAVE)
    parsed: list[bytes] = []
    monkeypatch.setattr(json, "loads", lambda data, **kw: parsed.append(data))
    with pytest.raises(wire.BadSignature, match="signature"):
        opener(other).open(sealed())
    assert parsed == []


def test_a_forged_pickle_payload_is_never_unpickled(tmp_path: Path) -> None:
    bomb = tmp_path / "unpickled"

    class Bomb:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(bomb), "w"))

    doc = {"v": 2, "dir": "m2s", "run": "r", "from": "m", "seq": 1, "kind": "task", "body": {}}
    header = json.dumps(doc)
    frame = [os.urandom(32), header.encode(), pickle.dumps(Bomb())]
    with pytest.raises(wire.Dropped):
        opener().open(frame)
    assert not bomb.exists()


def test_each_direction_has_its_own_key_so_a_reflected_frame_fails() -> None:
    to_master = wire.frame_key(SECRET, wire.TO_MASTER)
    assert to_master != KEY
    from_slave = wire.Sealer(to_master, "s", wire.TO_MASTER).seal("status", "run-1")
    assert wire.Opener(to_master, wire.TO_MASTER).open(from_slave).kind == "status"
    with pytest.raises(wire.Dropped, match="signature"):
        opener().open(from_slave)  # a slave's frame reflected to a slave
    from_master = wire.Sealer(KEY, "run-1", wire.TO_SLAVE).seal("heartbeat", "run-1", to="s")
    with pytest.raises(wire.Dropped, match="signature"):
        wire.Opener(to_master, wire.TO_MASTER).open(from_master)  # reflected to the master


def test_the_direction_and_recipient_are_in_the_signed_header() -> None:
    frame = wire.Sealer(KEY, "run-1", wire.TO_MASTER).seal("heartbeat", "run-1", to="slave-a")
    with pytest.raises(wire.Dropped, match="other direction"):
        opener().open(frame)  # right key, wrong direction named: refused too
    msg = opener().open(wire.Sealer(KEY, "run-1", wire.TO_SLAVE).seal("task", "run-1", to="a"))
    assert msg.to == "a"
    assert opener().open(sealed()).to == "run-1"  # by default: the run


def test_a_payload_where_none_may_be_is_dropped_before_the_signature() -> None:
    frame = sealed(payload=b"x" * 1000)
    master_side = wire.Opener(KEY, wire.TO_SLAVE)  # max_payload 0, as on a master
    with pytest.raises(wire.Dropped, match="payload of 1,000 bytes"):
        master_side.open(frame)


@pytest.mark.parametrize(
    "parts",
    [
        [b"one part"],
        [b"a", b"b", b"c", b"d"],
        [b"short sig", b"{}", b""],
    ],
)
def test_malformed_frames_are_dropped(parts: list[bytes]) -> None:
    with pytest.raises(wire.Dropped, match="not a taskmaster frame") as caught:
        opener().open(parts)
    assert not isinstance(caught.value, wire.BadSignature)  # the master tells no one of these


def test_an_oversized_header_is_dropped_before_the_signature_is_computed() -> None:
    sig, header, payload = sealed()
    with pytest.raises(wire.Dropped, match="size"):
        opener(max_header=10).open([sig, header, payload])


def _signed(doc: object) -> list[bytes]:
    header = json.dumps(doc).encode()
    mac = wire.Sealer(KEY, "x", wire.TO_SLAVE)._mac  # a sealer's signature, over any header
    return [wire._sign(mac, header, b""), header, b""]


@pytest.mark.parametrize(
    "doc",
    [
        [1, 2],
        {"v": 2, "dir": "m2s", "run": None, "from": "", "seq": 1, "kind": "k", "body": {}},
        {"v": 2, "dir": "m2s", "run": None, "from": "x" * 65, "seq": 1, "kind": "k", "body": {}},
        {"v": 2, "dir": "m2s", "run": None, "from": "s", "seq": 0, "kind": "k", "body": {}},
        {"v": 2, "dir": "m2s", "run": None, "from": "s", "seq": True, "kind": "k", "body": {}},
        {"v": 2, "dir": "m2s", "run": 5, "from": "s", "seq": 1, "kind": "k", "body": {}},
        {"v": 2, "dir": "m2s", "run": None, "from": "s", "seq": 1, "kind": "k", "body": []},
        {"v": 2, "dir": "m2s", "from": "s", "seq": 1, "body": {}},
        {"v": 2, "dir": "m2s", "run": None, "from": "s", "to": 7, "seq": 1, "kind": "k"},
    ],
)
def test_signed_headers_with_bad_fields_are_dropped(doc: object) -> None:
    with pytest.raises(wire.Dropped, match="signed, but"):
        opener().open(_signed(doc))


def test_another_protocol_version_is_told_apart_after_the_signature() -> None:
    frame = wire.Sealer(KEY, "slave-9", wire.TO_SLAVE, version=3).seal("hello", None)
    with pytest.raises(wire.VersionMismatch) as info:
        opener().open(frame)
    assert info.value.version == 3 and info.value.sender == "slave-9"
    assert "protocol 3" in str(info.value)


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
    path.write_text(f"  {HEX64}\n")
    path.chmod(0o600)
    secret = wire.load_secret(str(path), {})
    assert secret is not None and secret.value == HEX64.encode() and not secret.local
    assert secret.warning is None
    assert "0123456789abcdef" not in repr(secret)


def test_a_secret_file_others_can_read_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "tm.secret"
    path.write_text(HEX64)
    path.chmod(0o644)
    secret = wire.load_secret(str(path), {})
    assert secret is not None and secret.warning is not None and "chmod 600" in secret.warning


def test_the_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tm.secret"
    path.write_text("from-the-file-0123456789-0123456789")
    secret = wire.load_secret(str(path), {wire.SECRET_ENV: "from-the-environment-0123456789"})
    assert secret is not None and secret.value == b"from-the-file-0123456789-0123456789"


def test_no_secret_anywhere_is_none() -> None:
    assert wire.load_secret(None, {}) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "short",
        "thirty-one bytes of plain text!",
        "0123456789abcdef" * 3 + "0123456789abcde",
    ],
)
def test_empty_or_short_secrets_are_refused_with_a_recipe(value: str) -> None:
    # 32 random bytes' worth: 64 hex characters (63 are too few), or 32 bytes of other text.
    with pytest.raises(UsageError, match="it needs 32") as info:
        wire.load_secret(None, {wire.SECRET_ENV: value})
    assert "secrets.token_hex" in str(info.value)
    if value.strip():
        assert value.strip() not in str(info.value)


@pytest.mark.parametrize("value", [HEX64, "thirty-two bytes of plain text!!"])
def test_32_random_bytes_worth_is_enough(value: str) -> None:
    secret = wire.load_secret(None, {wire.SECRET_ENV: value})
    assert secret is not None and secret.value == value.encode()


def test_without_a_secret_a_per_user_one_is_made_once_0600(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    first = wire.find_secret(None, env)
    path = tmp_path / "config" / "taskmaster" / "zmq.secret"
    assert first.local and str(path) in first.origin and len(first.value) == 64
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert wire.find_secret(None, env).value == first.value  # the same on every use
    assert list(path.parent.iterdir()) == [path]  # no temp file left
    explicit = wire.find_secret(None, {**env, wire.SECRET_ENV: HEX64})
    assert not explicit.local


def test_a_per_user_secret_others_could_touch_is_refused(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    path = Path(wire.find_secret(None, env).origin.rpartition(" ")[2])
    path.chmod(0o640)
    with pytest.raises(UsageError, match="others can read it"):
        wire.find_secret(None, env)
    path.chmod(0o600)
    path.parent.chmod(0o777)
    with pytest.raises(UsageError, match="not yours alone"):
        wire.find_secret(None, env)
    path.parent.chmod(0o700)
    victim = tmp_path / "victim"
    victim.write_text(HEX64)
    path.unlink()
    path.symlink_to(victim)
    with pytest.raises(UsageError, match="cannot use"):
        wire.find_secret(None, env)  # never through a symlink


def test_a_missing_secret_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        wire.load_secret(str(tmp_path / "nope"), {})


def test_a_binary_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tm.secret"
    path.write_bytes(b"\xff" * 32)
    with pytest.raises(UsageError, match="not text"):
        wire.load_secret(str(path), {})


LOCAL = wire.Secret(b"x" * 64, "the per-user secret", local=True)


def test_the_master_listens_on_loopback_without_a_secret_and_everywhere_with_one() -> None:
    assert wire.master_address(None, LOCAL) == "tcp://127.0.0.1:3050"
    assert wire.master_address(None, SECRET) == "tcp://0.0.0.0:3050"
    assert wire.master_address("tcp://10.1.2.3:9", SECRET) == "tcp://10.1.2.3:9"
    assert wire.master_address("tcp://localhost:9", LOCAL) == "tcp://localhost:9"


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:3050", "tcp://10.0.0.5:1", "tcp://host:2"])
def test_no_secret_refuses_other_addresses_and_says_how_to_make_one(address: str) -> None:
    with pytest.raises(UsageError, match="without a secret") as info:
        wire.master_address(address, LOCAL)
    assert wire.MAKE_SECRET in str(info.value)
    with pytest.raises(UsageError, match="without a secret"):
        wire.slave_address(address, LOCAL)


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
