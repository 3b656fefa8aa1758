"""Joining a Ray cluster, and shipping the job module to its nodes.

``--ray auto`` joins the cluster this host belongs to, ``--ray HOST:PORT`` a cluster by its
address, ``--ray ray://HOST:PORT`` through Ray Client; ``RAY_ADDRESS`` is what ``auto`` finds
first, as for Ray's own tools. Token authentication works as in Ray's CLI: with
``RAY_AUTH_MODE`` unset, ``auto`` turns it on when a token is found (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); an explicit address needs
``RAY_AUTH_MODE=token``. A refused connection is turned into a message saying so.
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import time
from types import ModuleType
from typing import Any

import ray
from ray.exceptions import AuthenticationError, RuntimeEnvSetupError

from taskmaster.errors import UsageError
from taskmaster.record import record

CLIENT_TRIES = 3  # ray:// joins tried when Ray Client's server fails as it starts (see _init)
CLIENT_PAUSE = 1.0  # seconds between them

# Never shipped to the cluster with the job module's folder: our own state, caches, VCS.
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", "*.state.json", "*.failures.jsonl"]


@record
class Cluster:
    address: str
    cpus: int
    nodes: int


def connect(address: str, runtime_env: dict[str, Any] | None = None) -> Cluster:
    """Join the Ray cluster at ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``)."""
    if not address:
        raise UsageError("--ray needs an address: auto, HOST:PORT or ray://HOST:PORT")
    try:
        _init(address, runtime_env)
    except AuthenticationError as exc:
        raise UsageError(_auth_help(address, exc)) from None
    except RuntimeEnvSetupError as exc:
        folder = (runtime_env or {}).get("working_dir", "?")
        raise UsageError(
            f"--ray {address}: the job module's folder {folder} could not be shipped to the "
            f"cluster ({_last_line(exc)}). Every file in it goes to each node: put the job "
            "module in a folder of its own (with what it imports), under 500 MiB."
        ) from None
    except ConnectionError as exc:
        raise UsageError(
            f"--ray {address}: could not join the Ray cluster ({_first_line(exc)}). "
            + _connect_help()
        ) from None
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"--ray {address}: {_first_line(exc)}") from None
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    alive: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    nodes = sum(1 for node in alive if node.get("Alive"))
    return Cluster(address, int(resources.get("CPU", 0)), nodes)


def _init(address: str, runtime_env: dict[str, Any] | None) -> None:
    """ray.init, tried again when Ray Client's server fails as it starts.

    For each client the head's client server starts a server process of its own, and that
    process sometimes dies as it starts ("Initialization failure from server"). Nothing has
    run yet, so a second try is safe; a cluster that is not there fails differently.
    """
    for attempt in range(CLIENT_TRIES):
        try:
            ray.init(
                address=address,
                runtime_env=runtime_env,
                logging_level=logging.WARNING,
                log_to_driver=True,
                configure_logging=True,
            )
            return
        except ConnectionAbortedError:
            if not address.startswith("ray://") or attempt == CLIENT_TRIES - 1:
                raise
            disconnect()
            time.sleep(CLIENT_PAUSE)


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _connect_help() -> str:
    steps = (
        "Is a cluster running there? Start one with `ray start --head` (then --ray auto on "
        "that host), or give the address it printed (HOST:PORT, or ray://HOST:10001 for Ray "
        "Client)."
    )
    if os.environ.get("RAY_AUTH_MODE") != "token":
        steps += (
            " If the cluster uses token authentication (`ray start` turns it on when a token "
            "exists), an explicit address needs RAY_AUTH_MODE=token and the cluster's token "
            "in RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token "
            "(`ray get-auth-token` on the head node prints it); --ray auto finds a local "
            "token by itself."
        )
    return steps


def _auth_help(address: str, exc: AuthenticationError) -> str:
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode != "token":
        step = (
            "The cluster uses token authentication: set RAY_AUTH_MODE=token and make its token "
            "available here (RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or "
            "~/.ray/auth_token; `ray get-auth-token` on the head node prints it)."
        )
    else:
        step = (
            "RAY_AUTH_MODE=token is set but the token was refused or not found: put the "
            "cluster's token in RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or "
            "~/.ray/auth_token (`ray get-auth-token` on the head node prints it)."
        )
    return f"--ray {address}: the cluster refused this client ({exc.message}). {step}"


def _is_installed(path: str) -> bool:
    """Whether a module file lives in an installed environment (site-packages, stdlib)."""
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    real = os.path.realpath(path)
    return any(real.startswith(os.path.realpath(root) + os.sep) for root in roots)


def runtime_env_for(module: ModuleType) -> dict[str, Any] | None:
    """How the job module reaches every node: its folder as Ray's ``working_dir``.

    A file target (``jobs.py``) ships its folder, so its neighbours come along and it is
    imported by the same name on the actors. A dotted module (``mypkg.jobs``) ships the
    folder its top-level package was found in. A module installed in the environment is
    expected to be installed on the nodes too, and ships nothing.
    """
    path = getattr(module, "__file__", None)
    if not path or _is_installed(path):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    for _ in range(module.__name__.count(".")):
        folder = os.path.dirname(folder)
    if folder not in sys.path and os.path.realpath(folder) not in map(os.path.realpath, sys.path):
        return None  # not how it was imported: leave it to the nodes' environment
    return {"working_dir": folder, "excludes": list(EXCLUDES)}


@record
class Death:
    """What Ray said about a dead actor: why, and where and which process, when it knew."""

    why: str
    node: str = ""
    pid: int = 0


_FIELDS = ("class_name:", "actor_id:", "pid:", "name:", "namespace:", "ip:")
# Ray appends a paragraph of generic causes; ours, shorter, replaces it.
_HINTS = ("Some common causes", "There are some potential root causes", "To troubleshoot")
_LIKELY = "the OOM killer, kill -9, a crash in C code, or its node lost?"


def describe_death(exc: BaseException) -> Death:
    """One line on why an actor died, out of Ray's error (its long hints trimmed)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    field_of = {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip()
        for line in lines
        if line.startswith(_FIELDS)
    }
    detail = " ".join(line for line in lines[1:] if line and not line.startswith(_FIELDS))
    detail = " ".join((detail or _first_line(exc)).split())
    for hint in _HINTS:
        detail = detail.split(hint, 1)[0].strip()
    if "Worker exit type: SYSTEM_ERROR" in detail:
        detail += f" ({_LIKELY})"
    if len(detail) > 400:
        detail = detail[:397] + "..."
    pid = field_of.get("pid", "0")
    return Death(f"died: {detail}", field_of.get("ip", ""), int(pid) if pid.isdigit() else 0)
