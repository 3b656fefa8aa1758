"""Command-line entry points. The only module that prints errors and exits."""

from __future__ import annotations

import sys
from typing import Any

import click

from taskmaster.cli.options import table_options
from taskmaster.cli.progress import PlainReporter, RichReporter
from taskmaster.cli.target import Target, load_target, parse_kwargs
from taskmaster.core.events import Transport
from taskmaster.core.source import call_get_jobs, check_kwargs
from taskmaster.core.stats import Reporter, RunStats
from taskmaster.errors import (
    EXIT_USAGE,
    GeneratorError,
    TaskmasterError,
    UsageError,
)
from taskmaster.options import default_workers, parse_rate
from taskmaster.runner import (
    CheckpointedRun,
    Plan,
    default_state_file,
    execute,
    failures_file_for,
    validate_options,
)
from taskmaster.store.codec import short_repr

DEFAULT_HANDLE_BATCH_SIZE = 100  # jobs per handle_batch call unless --batch-size says
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def fail(message: str, code: int) -> None:
    click.echo(f"taskmaster: error: {message}", err=True)
    sys.exit(code)


def _split_args(args: tuple[str, ...], workers: int | None) -> tuple[int | None, list[str]]:
    rest = list(args)
    if rest and "=" not in rest[0]:
        first = rest.pop(0)
        try:
            positional = int(first)
        except ValueError:
            raise click.UsageError(
                f"{first!r} is neither a worker count nor KEY=VALUE: usage is "
                "tm-run TARGET [WORKERS] [KEY=VALUE]..."
            ) from None
        if workers is not None and workers != positional:
            raise click.UsageError(
                f"workers given twice: {positional} as an argument and --workers {workers}"
            )
        workers = positional
    return workers, rest


def _report_end(stats: RunStats) -> None:
    err = stats.generator_error
    if err is not None:
        click.echo(err.traceback_text.rstrip(), err=True)
        done = (
            "The jobs pulled before it were finished and checkpointed"
            if stats.done_this_run or stats.failed_this_run
            else "No job had been pulled"
        )
        click.echo(
            f"taskmaster: {err}. {done}; fix get_jobs and run again with --resume.", err=True
        )
        return
    ending = stats.ending()
    if ending is not None:
        click.echo(ending.message(), err=True)


def prepare_options(opts: dict[str, Any], tgt: Target, kwargs: dict[str, str]) -> Reporter:
    """What tm-run and tm-master make of their shared options; returns the reporter."""
    rate_text = opts.pop("rate_text")
    opts["rate"] = parse_rate(rate_text) if rate_text else None
    # Workers (local or remote) batch for handle_batch if the module has one.
    if getattr(tgt.module, "handle_batch", None) is not None and opts["batch_size"] is None:
        opts["batch_size"] = DEFAULT_HANDLE_BATCH_SIZE
    if opts["state_file"] is None:
        opts["state_file"] = default_state_file(tgt.stem, kwargs)
    reporter: Reporter = _reporter(
        opts.pop("no_progress"), opts.pop("log_every"), opts.pop("log_format")
    )
    return reporter


def launch(
    tgt: Target,
    kwargs: dict[str, str],
    reporter: Reporter,
    opts: dict[str, Any],
    transport: Transport | None = None,
) -> RunStats:
    """The one way from a command line into a run, for tm-run and tm-master alike:
    a run over get_jobs, or with --retry-failed the same run over the failures file."""
    retry = opts.pop("retry_failed")
    opt = validate_options(opts)
    plan: Plan
    if retry:
        from taskmaster.replay import Replay  # only for --retry-failed: not on every start

        plan = Replay(opt)
    else:
        assert tgt.get_jobs is not None
        check_kwargs(tgt.get_jobs, kwargs)
        plan = CheckpointedRun(opt, tgt.get_jobs, tgt.identity, kwargs, tgt.count_jobs)
    return execute(opt, plan, tgt.code(kwargs), reporter, transport)


@click.command(context_settings=CONTEXT)
@click.argument("target")
@click.argument("args", nargs=-1, metavar="[WORKERS] [KEY=VALUE]...")
@table_options(workers=None)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS",
    help="Run on a Ray cluster (auto, HOST:PORT or ray://HOST:PORT): WORKERS actors "
    "[default: the cluster's CPUs].",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Run only the jobs in the failures file again; successes leave it.",
)
@click.option(
    "--get-jobs",
    "get_jobs_name",
    default="get_jobs",
    show_default=True,
    help="Generator function (NAME, or module:NAME).",
)
@click.option(
    "--handle-job",
    "handle_job_name",
    default="handle_job",
    show_default=True,
    help="Handler function (NAME, or module:NAME).",
)
@click.option("--dry-run", is_flag=True, help="Print the first jobs (or --limit) and run none.")
@click.option("--rate", "rate_text", metavar="N/s", help="Most job starts per second (or /m, /h).")
@click.option("--no-progress", is_flag=True, help="No live display, even on a terminal.")
@click.option(
    "--log-every",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds between status lines when stderr is not a terminal.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Status lines and summary as text or JSON objects.",
)
def run_command(target: str, args: tuple[str, ...], **opts: Any) -> None:
    """Run handle_job on every job get_jobs yields, on WORKERS processes of this machine.

    TARGET is a job module: a file (jobs.py) or a dotted module (mypkg.jobs) defining
    get_jobs(last=None, **kwargs) and handle_job(job). KEY=VALUE arguments are passed to
    get_jobs as strings. Progress is checkpointed; after a crash or Ctrl-C, run the same
    command with --resume.

    Exit codes: 0 all done; 1 some jobs failed (see the failures file) or get_jobs raised;
    2 bad usage or input; 74 the state folder failed; 75 another run holds the state file;
    130 interrupted (checkpoint written).
    """
    reporter: Any = None
    try:
        workers, rest = _split_args(args, opts.pop("workers"))
        kwargs = parse_kwargs(rest)
        tgt = load_target(target, opts.pop("get_jobs_name"), opts.pop("handle_job_name"))
        assert tgt.get_jobs is not None
        if opts.pop("dry_run"):
            dry_run(tgt.get_jobs, kwargs, opts["limit"] or 10)
            return
        ray_address = opts.pop("ray_address")
        reporter = prepare_options(opts, tgt, kwargs)
        transport = None
        if ray_address is not None:
            from taskmaster.cli.raycluster import ray_transport

            transport, workers = ray_transport(
                ray_address, tgt, kwargs, workers, opts["threads"], opts["job_timeout"]
            )
        opts["workers"] = workers if workers is not None else default_workers()
        stats = launch(tgt, kwargs, reporter, opts, transport)
    except TaskmasterError as exc:
        refuse_run(reporter, exc)
        return
    end_run(reporter, stats)


def refuse_run(reporter: Any, exc: TaskmasterError) -> None:
    """Exit for an error that ended a run (or kept it from starting)."""
    if reporter is not None:
        reporter.close()
    if isinstance(exc, GeneratorError) and exc.traceback_text:
        click.echo(exc.traceback_text.rstrip(), err=True)
    fail(str(exc), exc.exit_code)


def end_run(reporter: Any, stats: RunStats) -> None:
    """The summary, what to do next, and the run's exit code."""
    reporter.finished(stats)
    _report_end(stats)
    sys.exit(stats.exit_code)


def _reporter(no_progress: bool, log_every: float, log_format: str) -> Any:
    if log_every <= 0:
        raise UsageError(f"--log-every must be more than 0 seconds, got {log_every!r}")
    if not no_progress and log_format == "text" and sys.stderr.isatty():
        return RichReporter()
    return PlainReporter(every=log_every, json_lines=log_format == "json")


def dry_run(get_jobs: Any, kwargs: dict[str, str], count: int) -> None:
    source = call_get_jobs(get_jobs, kwargs)
    jobs = source.pull(count, max_wait=float("inf"))
    for seq, job in enumerate(jobs):
        click.echo(f"{seq}\t{short_repr(job)}")
    if source.error is not None:
        click.echo(source.error.traceback_text.rstrip(), err=True)
        fail(str(source.error), source.error.exit_code)
    more = "" if source.exhausted else " (more follow)"
    click.echo(f"taskmaster: dry run: {len(jobs)} jobs shown{more}, none run", err=True)


@click.command(context_settings=CONTEXT)
@click.argument("state_file", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--failures",
    "failures_file",
    type=click.Path(dir_okay=False),
    help="Failures file [default: beside the state file].",
)
def status_command(state_file: str | None, failures_file: str | None) -> None:
    """Show where a run stands, from its STATE_FILE, without touching it.

    Works while the run is going. Without STATE_FILE, the one *.state.json in this folder.
    """
    from taskmaster.cli.status import find_state_file, read_status, render  # tm-status only

    try:
        path = state_file or find_state_file()
        click.echo(render(read_status(path, failures_file or failures_file_for(path))))
    except TaskmasterError as exc:
        fail(str(exc), exc.exit_code)


def main() -> None:  # pragma: no cover - exercised through the console script
    run_command(prog_name="tm-run")


__all__ = ["run_command", "main", "EXIT_USAGE"]
