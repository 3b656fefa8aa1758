"""The original Taskmaster README's commands, typed as written, on taskmaster/example.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MARKER_VAR

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path, marker: str) -> dict[str, str]:
    env = {**os.environ, MARKER_VAR: marker, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("TASKMASTER_SECRET", None)
    return env


def _tool(name: str) -> list[str]:
    module = "taskmaster" if name == "tm-run" else "taskmaster.cli.remote"
    sub = [] if name == "tm-run" else [name.removeprefix("tm-")]
    return [sys.executable, "-m", module, *sub]


def test_tm_run_taskmaster_example_py_8(tmp_path: Path, marker: str) -> None:
    # As written in the original: from a checkout, the example by its path, 8 workers.
    result = subprocess.run(
        [*_tool("tm-run"), "taskmaster/example.py", "8", "count=20000"]
        + ["--state-file", str(tmp_path / "example.state.json"), "--no-progress"],
        cwd=ROOT,
        env=_env(tmp_path, marker),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "20,000 jobs done, 0 failed" in result.stderr


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("master", "slave"),
    [
        ("taskmaster.example", "taskmaster.example"),
        ("taskmaster.example:get_jobs", "taskmaster.example:handle_job"),
    ],
)
def test_tm_master_and_tm_slave_on_taskmaster_example(
    tmp_path: Path, marker: str, master: str, slave: str
) -> None:
    pytest.importorskip("zmq")
    env, address = _env(tmp_path, marker), f"tcp://127.0.0.1:{_port()}"
    common = {"cwd": tmp_path, "env": env, "stdin": subprocess.DEVNULL, "text": True}
    proc = subprocess.Popen(
        [*_tool("tm-master"), master, "argument=value", "count=5000", "--address", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **common,  # type: ignore[call-overload]
    )
    try:
        spawn = subprocess.run(
            [*_tool("tm-spawn"), slave, "2", "--address", address],
            capture_output=True,
            timeout=60,
            **common,  # type: ignore[call-overload]
        )
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "5,000 jobs done, 0 failed" in err
    assert spawn.returncode == 0, spawn.stderr
