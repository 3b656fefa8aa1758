"""tm-master + tm-spawn 2 on no-op jobs: CurveZMQ (the default) against plaintext, and a
run under attack (idle connections and a flood of forged frames).

    python benchmarks/remote_security.py [--jobs 200000] [--repeat 3] [--old PATH]

Variants, each run ``--repeat`` times, alternating, on loopback:

- ``old plaintext``: the code at PATH (``--old``; e.g. ``git archive`` of the commit before
  issue 10), whose default was plaintext signed frames;
- ``--no-curve``: today's code, plaintext;
- ``curve``: today's default;
- ``curve + attack`` / ``--no-curve + attack``: the same while another process holds 1,100
  idle TCP connections to the master (reopened as the master's handshake timeout closes
  them) and floods it with forged frames from 8 ZeroMQ sockets (as fast as they take them)
  and 100 raw connections a second, each a ZMTP greeting and 64 KiB of junk. The attacker
  is one more process on the same machine, so it also takes CPU from the run.

The rate is the master's own summary (``jobs/s`` over the run, ``--log-format json``); the
wall time is the master process's, start to exit, and includes its start-up and the second
it keeps answering latecomers after a finished run. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODULE = HERE / "jobs" / "noop_jobs.py"
SECRET = "0123456789abcdef" * 4
RAW_PER_SECOND = 100  # new raw connections a second, each a greeting and 64 KiB of junk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_once(code: Path, jobs: int, curve: bool, attack: bool) -> dict[str, Any]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(code), "TASKMASTER_SECRET": SECRET}
    remote = [sys.executable, "-m", "taskmaster.cli.remote"]
    flag = [] if code == ROOT and curve else ["--no-curve"] if code == ROOT else []
    with tempfile.TemporaryDirectory() as tmp:
        state = str(Path(tmp) / "state.json")
        master_cmd = [*remote, "master", str(MODULE), f"n={jobs}", "--address", address]
        master_cmd += ["--state-file", state, "--log-format", "json", "--no-progress", *flag]
        attacker = None
        if attack:
            attacker = subprocess.Popen(
                [sys.executable, __file__, "--attack", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        start = time.monotonic()
        master = subprocess.Popen(
            master_cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        spawn_cmd = [*remote, "spawn", str(MODULE), "2", "--address", address, *flag]
        spawn = subprocess.Popen(
            spawn_cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _, err = master.communicate(timeout=600)
            wall = time.monotonic() - start
            spawn.wait(timeout=60)
        finally:
            for proc in (master, spawn, attacker):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
    text = err.decode(errors="replace")
    summary = _summary(text)
    ok = master.returncode == 0 and spawn.returncode == 0 and summary.get("done") == jobs
    dropped = sum(1 for line in text.splitlines() if "dropped" in line)
    return {"rate": summary.get("rate", 0.0), "wall": wall, "ok": ok, "dropped_lines": dropped}


def _summary(stderr: str) -> dict[str, Any]:
    for line in reversed(stderr.splitlines()):
        with_json = line[line.find("{") :] if "{" in line else ""
        try:
            doc = json.loads(with_json)
        except ValueError:
            continue
        if isinstance(doc, dict) and "rate" in doc:
            return doc
    return {}


# -- the attacker -------------------------------------------------------------------------


def attack(port: int, idle_count: int = 1100, flooders: int = 8) -> None:
    """Hold ``idle_count`` idle connections and flood forged frames until killed."""
    import zmq

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=_keep_idle, args=(port, idle_count), daemon=True).start()
    ctx = zmq.Context()
    header = json.dumps({"v": 2, "dir": "s2m", "run": None, "from": "x", "seq": 1}).encode()
    socks = []
    for i in range(flooders):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 100)
        sock.connect(f"tcp://127.0.9.{i + 1}:0;127.0.0.1:{port}")
        socks.append(sock)
    # A ZMTP 3 greeting (NULL mechanism), then junk: what a CURVE master must turn away.
    junk = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\0" * 48 + os.urandom(65536)
    next_raw = time.monotonic()
    while True:
        sent = 0
        for sock in socks:
            with contextlib.suppress(zmq.Again):
                sock.send_multipart([os.urandom(32), header, b""], zmq.NOBLOCK)
                sent += 1
        if time.monotonic() >= next_raw:  # raw connections: RAW_PER_SECOND
            next_raw += 1 / RAW_PER_SECOND
            with contextlib.suppress(OSError):
                _junk_connection(port, junk)
        elif not sent:
            time.sleep(0.001)  # no connection took a frame (CURVE turned them away): spare the CPU


def _junk_connection(port: int, junk: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
        raw.sendall(junk)


def _keep_idle(port: int, count: int) -> None:
    """``count`` connections that send nothing, reopened as the master closes them."""
    idle: list[socket.socket] = []
    while True:
        for i, sock in enumerate(list(idle)):
            try:
                sock.setblocking(False)
                if sock.recv(1) == b"":
                    raise OSError("closed")
            except BlockingIOError:
                continue
            except OSError:
                sock.close()
                idle[i] = _connect(port)
        while len(idle) < count:
            idle.append(_connect(port))
        time.sleep(0.5)


def _connect(port: int) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            time.sleep(0.1)


# -- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--old", type=Path, help="a checkout of the code before issue 10")
    parser.add_argument("--no-attack", action="store_true", help="skip the runs under attack")
    parser.add_argument("--only", action="append", help="run only this variant (repeatable)")
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        attack(args.attack)
        return
    variants: list[tuple[str, Path, bool, bool]] = []
    if args.old is not None:
        variants.append(("old plaintext", args.old.resolve(), False, False))
    variants += [("--no-curve", ROOT, False, False), ("curve", ROOT, True, False)]
    if not args.no_attack:
        variants += [("curve + attack", ROOT, True, True)]
        variants += [("--no-curve + attack", ROOT, False, True)]
    if args.only:
        variants = [v for v in variants if v[0] in args.only or v[0] == "curve"]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in variants}
    for _ in range(args.repeat):
        for name, code, curve, attacked in variants:
            res = run_once(code, args.jobs, curve, attacked)
            results[name].append(res)
            done = f"{res['rate']:,.0f} jobs/s, {res['wall']:.1f} s"
            print(f"  ({name}: {done}, {res['dropped_lines']} 'dropped' lines)", flush=True)
    print(f"tm-master + tm-spawn 2, {args.jobs:,} no-op jobs, median of {args.repeat}")
    base = statistics.median(r["rate"] for r in results["curve"])
    out = {}
    for name, runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        wall = statistics.median(r["wall"] for r in runs)
        ok = all(r["ok"] for r in runs)
        out[name] = {"rate": rate, "wall": wall, "ok": ok, "rates": [r["rate"] for r in runs]}
        note = "" if ok else "  (a run failed)"
        print(f"  {name:22} {rate:>10,.0f} jobs/s  {wall:6.2f} s wall  x{rate / base:.2f}{note}")
    print(json.dumps({"jobs": args.jobs, "repeat": args.repeat, "results": out}))


if __name__ == "__main__":
    main()
