"""tm-master, tm-slave and tm-spawn: one run over several hosts, through ZeroMQ.

The master is ``taskmaster.run`` with a ZeroMQ transport instead of local workers, so it
takes tm-run's own options (the same click parameters, not copies) and keeps its rules and
exit codes. pyzmq is imported only here, lazily, so tm-run works without it.

``python -m taskmaster.cli.remote master|slave|spawn ...`` runs the same commands; tm-spawn
starts its slaves that way, with the secret in their environment, never on a command line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from taskmaster.cli.run import (
    CONTEXT,
    dry_run,
    end_run,
    fail,
    launch,
    prepare_options,
    refuse_run,
    run_command,
)
from taskmaster.cli.target import load_target, parse_kwargs
from taskmaster.core.stats import RunStats
from taskmaster.errors import EXIT_USAGE, TaskmasterError, UsageError
from taskmaster.options import Options
from taskmaster.remote import frames
from taskmaster.remote.secret import forget_env_secret
from taskmaster.remote.spawn import finished_fd_from_env, supervise
from taskmaster.runner import local_transport

INSTALL_HINT = "pip install 'taskmaster-runner[zmq]'"
MASTER_OPTIONS = (
    *("size", "state_file", "failures_file", "resume", "reset", "retry_failed", "retries"),
    *("retry_delay", "checkpoint_every", "drain_timeout", "max_failures", "batch_size"),
    *("get_jobs_name", "limit", "dry_run", "total", "rate_text", "no_progress", "log_every"),
    "log_format",
)
SLAVE_OPTIONS = ("threads", "job_timeout", "handle_job_name")


def _need_zmq() -> None:
    try:
        import zmq  # noqa: F401
    except ImportError:
        fail(f"several hosts need pyzmq, which is not installed: {INSTALL_HINT}", EXIT_USAGE)


def _from_tm_run(names: tuple[str, ...]) -> list[click.Parameter]:
    """tm-run's own click parameters, so the commands share options, defaults and help."""
    by_name = {p.name: p for p in run_command.params}
    return [by_name[name] for name in names]


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _address_option(default_text: str) -> Decorator:
    return click.option("--address", "-a", metavar="tcp://HOST:PORT", help=default_text)


def _curve_option() -> Decorator:
    return click.option(
        "--curve/--no-curve",
        default=True,
        help="CurveZMQ (the default; keys derived from the secret): encrypted, and nobody "
        "without the secret gets a message delivered. --no-curve gives that up: frames "
        "stay signed but travel in the clear, and anyone who can connect can make the "
        "master buffer and check what it sends. Master and slaves alike.",
    )


def _curve_keys(use: bool, secret: frames.Secret) -> Any:
    if not use:
        return None
    from taskmaster.remote.curve import derive_keys

    return derive_keys(secret)


def _explicit_secret(secret_file: str | None) -> frames.Secret | None:
    """--secret-file or $TASKMASTER_SECRET, which then leaves the environment: no job, nor
    any process a job starts, can read it there."""
    try:
        return frames.load_secret(secret_file, os.environ)
    finally:
        forget_env_secret()


def _start_up() -> None:
    """What every remote command does first: take the secret out of reach, lift the limit
    on open files (idle connections from anyone must not starve the checkpoint of one)."""
    from taskmaster.remote.sockets import raise_fd_limit

    raise_fd_limit()


def _secret_option() -> Decorator:
    return click.option(
        "--secret-file",
        type=click.Path(dir_okay=False),
        help=f"File holding the shared secret [default: ${frames.SECRET_ENV}].",
    )


# -- tm-master ----------------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
@click.argument("target")
@click.argument("args", nargs=-1, metavar="[KEY=VALUE]...")
@_address_option(
    f"Where to listen [default: tcp://0.0.0.0:{frames.DEFAULT_PORT} with a secret, "
    f"tcp://127.0.0.1:{frames.DEFAULT_PORT} without]."
)
@_secret_option()
@_curve_option()
@click.option(
    "--heartbeat-timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds of silence after which a slave is lost and its jobs run elsewhere.",
)
def master_command(
    target: str,
    args: tuple[str, ...],
    address: str | None,
    secret_file: str | None,
    curve: bool,
    heartbeat_timeout: float,
    **opts: Any,
) -> None:
    """Pull jobs from get_jobs and hand them to tm-slaves on other hosts.

    TARGET is the job module (or module:get_jobs). The run is tm-run's: same window,
    checkpoint, --resume, retries, failures file and exit codes; only the workers are
    remote. Slaves connect with: tm-slave TARGET --address tcp://THIS-HOST:3050.

    Every frame is signed with the shared secret (--secret-file or $TASKMASTER_SECRET),
    and the connection is CurveZMQ with keys derived from it (--no-curve turns that off).
    Without a secret, master and slaves use your per-user secret of this host
    (~/.config/taskmaster/zmq.secret, made on first use) and 127.0.0.1 only. Anyone
    holding the secret can run any code on every slave.
    """
    _need_zmq()
    _start_up()
    from taskmaster.remote.master import MasterConfig, ZmqMasterTransport

    reporter: Any = None
    try:
        explicit = _explicit_secret(secret_file)
        kwargs = parse_kwargs(args)
        tgt = load_target(target, opts.pop("get_jobs_name"), need_handle_job=False)
        assert tgt.get_jobs is not None
        if opts.pop("dry_run"):
            dry_run(tgt.get_jobs, kwargs, opts["limit"] or 10)
            return
        secret = explicit or frames.user_secret(os.environ)
        address = frames.master_address(address, secret)
        if not 0.1 <= heartbeat_timeout <= 3600:
            raise UsageError(
                f"--heartbeat-timeout must be from 0.1 to 3600 seconds, got {heartbeat_timeout!r}"
            )
        reporter = prepare_options(opts, tgt, kwargs)
        _warn_secret(reporter.message, secret, address, curve)
        keys = _curve_keys(curve, secret)
        config = MasterConfig(address, secret, heartbeat_timeout, tgt.identity, keys)
        transport = ZmqMasterTransport(config, log=reporter.message)
        stats = _serve(transport, tgt, kwargs, reporter, opts)
    except TaskmasterError as exc:
        refuse_run(reporter, exc)
        return
    end_run(reporter, stats)


def _serve(
    transport: Any, tgt: Any, kwargs: dict[str, str], reporter: Any, opts: dict[str, Any]
) -> RunStats:
    """The run, through tm-run's own path; then the slaves hear how it ended."""
    stats: RunStats | None = None
    try:
        stats = launch(tgt, kwargs, reporter, opts, transport)
        return stats
    finally:
        # Finished: the slaves exit. Otherwise they wait for a master started with --resume.
        transport.farewell(finished=stats is not None and stats.finished)


master_command.params.extend(_from_tm_run(MASTER_OPTIONS))


def _warn_secret(log: Any, secret: frames.Secret, address: str, curve: bool) -> None:
    if secret.local:
        log(
            f"no secret given: listening on {address} only, with {secret.origin}, so only "
            "your own processes on this host can connect. For several hosts, make a secret "
            f"and pass it to the master and to every slave (--secret-file, or "
            f"${frames.SECRET_ENV}):\n    {frames.MAKE_SECRET}"
        )
    elif secret.warning:
        log(f"warning: {secret.warning}")
    if not curve:
        log(
            "warning: --no-curve: frames are signed but not encrypted, and anyone who can "
            f"connect to {address} can make this master buffer and check what they send"
        )


# -- tm-slave -----------------------------------------------------------------------------


def _slave_options(fn: Any) -> Any:
    """Options tm-slave and tm-spawn share (tm-run's --threads, --job-timeout too)."""
    options = [
        _address_option(f"The master [default: tcp://127.0.0.1:{frames.DEFAULT_PORT}]."),
        _secret_option(),
        _curve_option(),
        click.option(
            "--timeout",
            type=float,
            default=15.0,
            show_default=True,
            help="Seconds one attempt to reach the master may take.",
        ),
        click.option(
            "--retries",
            type=int,
            default=8,
            show_default=True,
            help="Further attempts to reach the master (after a pause that doubles) "
            "before giving up.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _check_patience(timeout: float, retries: int) -> None:
    if not 0 < timeout <= 86_400:
        raise UsageError(f"--timeout must be more than 0 seconds, got {timeout!r}")
    if not 0 <= retries <= 10_000:
        raise UsageError(f"--retries must be a whole number from 0 to 10000, got {retries!r}")


@click.command(context_settings=CONTEXT)
@click.argument("target")
@click.argument("args", nargs=-1, metavar="[KEY=VALUE]...")
@_slave_options
@click.option(
    "--workers",
    "-w",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes this slave runs jobs on.",
)
def slave_command(
    target: str,
    args: tuple[str, ...],
    address: str | None,
    secret_file: str | None,
    curve: bool,
    timeout: float,
    retries: int,
    workers: int,
    threads: int,
    job_timeout: float | None,
    handle_job_name: str,
) -> None:
    """Run the jobs of a tm-master on this host, until the master's run is finished.

    TARGET is the job module (or module:handle_job); KEY=VALUE arguments go to
    setup_worker(**kwargs), as with tm-run. Start it before or after the master;
    it waits for one (--timeout x (--retries + 1), with backoff) and rejoins a master
    restarted with --resume. Ctrl-C: finish the jobs in hand, return them, leave.

    Exit codes: 0 the master finished the run; 1 the master went away and did not come
    back; 2 bad usage, no master answered, wrong secret or another protocol version;
    130 stopped by Ctrl-C or SIGTERM.
    """
    _need_zmq()
    _start_up()
    from taskmaster.remote.slave import Slave, SlaveConfig

    pid = os.getpid()

    def log(text: str) -> None:
        click.echo(f"taskmaster: slave {pid}: {text}", err=True)

    try:
        secret = _explicit_secret(secret_file)  # before the job module is imported
        finished_fd = finished_fd_from_env()
        kwargs = parse_kwargs(args)
        tgt = load_target(target, handle_job=handle_job_name, need_get_jobs=False)
        secret = secret or frames.user_secret(os.environ)
        address = frames.slave_address(address, secret)
        _check_patience(timeout, retries)
        opt = Options(workers=workers, threads=threads, job_timeout=job_timeout)
        local = local_transport(opt, tgt.code(kwargs))
        if secret.warning:
            log(f"warning: {secret.warning}")
        keys = _curve_keys(curve, secret)
        config = SlaveConfig(address, secret, timeout, retries, keys, finished_fd)
        slave = Slave(config, local, log)
    except TaskmasterError as exc:
        fail(str(exc), exc.exit_code)
        return
    sys.exit(slave.run())


slave_command.params.extend(_from_tm_run(SLAVE_OPTIONS))


# -- tm-spawn -----------------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
@click.argument("target")
@click.argument("count", type=int)
@click.argument("args", nargs=-1, metavar="[KEY=VALUE]...")
@_slave_options
def spawn_command(
    target: str,
    count: int,
    args: tuple[str, ...],
    address: str | None,
    secret_file: str | None,
    curve: bool,
    timeout: float,
    retries: int,
    threads: int,
    job_timeout: float | None,
    handle_job_name: str,
) -> None:
    """Start COUNT tm-slave processes on this host and wait for them.

    Ctrl-C or SIGTERM is passed on to every slave once (a second one stops them at once).
    The slaves die with tm-spawn. Exit code: 0 when every slave exited 0, else the first
    other code (1 for a slave killed by a signal).
    """
    _need_zmq()
    try:
        explicit = _explicit_secret(secret_file)
        if not 1 <= count <= 1024:
            raise UsageError(f"COUNT must be a whole number from 1 to 1024, got {count}")
        parse_kwargs(args)
        load_target(target, handle_job=handle_job_name, need_get_jobs=False)  # fail once, here
        secret = explicit or frames.user_secret(os.environ)
        address = frames.slave_address(address, secret)
        _check_patience(timeout, retries)
        _curve_keys(curve, secret)
        Options(threads=threads, job_timeout=job_timeout)
    except TaskmasterError as exc:
        fail(str(exc), exc.exit_code)
        return
    argv = [sys.executable, "-m", "taskmaster.cli.remote", "slave", target, "--address", address]
    argv += ["--timeout", repr(timeout), "--retries", str(retries), "--threads", str(threads)]
    argv += ["--handle-job", handle_job_name, *([] if curve else ["--no-curve"]), *args]
    if job_timeout is not None:
        argv += ["--job-timeout", repr(job_timeout)]
    env = dict(os.environ)
    if not secret.local:  # a per-user secret each slave reads from its file itself
        env[frames.SECRET_ENV] = secret.text  # by environment: a command line is public
    sys.exit(supervise(argv, env, count, lambda text: click.echo(text, err=True)))


spawn_command.params.extend(_from_tm_run(SLAVE_OPTIONS))


# -- python -m taskmaster.cli.remote ------------------------------------------------------


@click.group(context_settings=CONTEXT)
def remote_main() -> None:
    """tm-master, tm-slave and tm-spawn as subcommands."""


remote_main.add_command(master_command, "master")
remote_main.add_command(slave_command, "slave")
remote_main.add_command(spawn_command, "spawn")

if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    remote_main(prog_name="python -m taskmaster.cli.remote")
