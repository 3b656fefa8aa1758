"""Command-line entry points. The only module that prints errors and exits."""

from __future__ import annotations

import sys
from typing import Any

import click

from taskmaster.cli.progress import PlainReporter, RichReporter
from taskmaster.cli.status import find_state_file, read_status, render
from taskmaster.cli.target import load_target, parse_kwargs
from taskmaster.core.source import call_get_jobs
from taskmaster.core.stats import RunStats
from taskmaster.errors import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    GeneratorError,
    TaskmasterError,
    UsageError,
)
from taskmaster.options import default_workers, parse_rate
from taskmaster.replay import retry_failed
from taskmaster.runner import default_state_file, failures_file_for, run
from taskmaster.store.codec import short_repr

DEFAULT_HANDLE_BATCH_SIZE = 100  # jobs per handle_batch call unless --batch-size says
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(message: str, code: int) -> None:
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
    elif stats.exit_code == EXIT_INTERRUPTED:
        where = f" (checkpoint: {stats.state_file})" if stats.state_file else ""
        click.echo(
            f"taskmaster: interrupted at watermark {stats.watermark:,}{where}; run the same "
            "command with --resume to continue",
            err=True,
        )


@click.command(context_settings=CONTEXT)
@click.argument("target")
@click.argument("args", nargs=-1, metavar="[WORKERS] [KEY=VALUE]...")
@click.option("--workers", "-w", type=int, help="Worker processes [default: CPU count].")
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS",
    help="Run on a Ray cluster (auto, HOST:PORT or ray://HOST:PORT): WORKERS actors "
    "[default: the cluster's CPUs].",
)
@click.option(
    "--threads",
    "-t",
    type=int,
    default=1,
    show_default=True,
    help="Threads per worker (concurrency for async handlers).",
)
@click.option(
    "--size",
    type=int,
    default=10_000,
    show_default=True,
    help="Window: most jobs pulled and not yet resolved.",
)
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False),
    help="Checkpoint path [default: ./<module>[-<hash of args>].state.json].",
)
@click.option(
    "--failures",
    "failures_file",
    type=click.Path(dir_okay=False),
    help="Failures file [default: beside the state file, .failures.jsonl].",
)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint.")
@click.option("--reset", is_flag=True, help="Delete the checkpoint and failures file first.")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Run only the jobs in the failures file again; successes leave it.",
)
@click.option(
    "--retries",
    type=int,
    default=2,
    show_default=True,
    help="Extra attempts for a job that raises or kills its worker.",
)
@click.option(
    "--retry-delay",
    type=float,
    default=0.1,
    show_default=True,
    help="Seconds before the first retry; doubles each time, with jitter.",
)
@click.option("--job-timeout", type=float, help="Seconds a job may run [default: no limit].")
@click.option(
    "--checkpoint-every",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between checkpoints.",
)
@click.option(
    "--drain-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="After Ctrl-C, seconds to let jobs in flight finish.",
)
@click.option("--max-failures", type=int, help="Stop once this many jobs failed for good.")
@click.option("--batch-size", type=int, help="Jobs per batch [default: adapts to job time].")
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
@click.option("--limit", type=int, help="Run only the first N jobs (a later --resume goes on).")
@click.option("--dry-run", is_flag=True, help="Print the first jobs (or --limit) and run none.")
@click.option("--total", type=int, help="Jobs in the run, for the ETA [default: count_jobs()].")
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
            _dry_run(tgt.get_jobs, kwargs, opts["limit"] or 10)
            return
        rate_text = opts.pop("rate_text")
        opts["rate"] = parse_rate(rate_text) if rate_text else None
        if opts["total"] is None and tgt.count_jobs is not None:
            opts["total"] = _count_jobs(tgt.count_jobs, kwargs)
        reporter = _reporter(opts.pop("no_progress"), opts.pop("log_every"), opts.pop("log_format"))
        if tgt.handle_batch is not None and opts["batch_size"] is None:
            opts["batch_size"] = DEFAULT_HANDLE_BATCH_SIZE
        if opts["state_file"] is None:
            opts["state_file"] = default_state_file(tgt.stem, kwargs)
        ray_address = opts.pop("ray_address")
        if ray_address is not None:
            from taskmaster.cli.raycluster import ray_transport

            opts["transport"], workers = ray_transport(
                ray_address, tgt, kwargs, workers, opts["threads"], opts["job_timeout"]
            )
        common = dict(
            reporter=reporter,
            setup_worker=tgt.setup_worker,
            teardown_worker=tgt.teardown_worker,
            handle_batch=tgt.handle_batch,
            workers=workers if workers is not None else default_workers(),
        )
        if opts.pop("retry_failed"):
            stats = retry_failed(tgt.handle_job, **common, **opts)
        else:
            stats = run(
                tgt.get_jobs, tgt.handle_job, kwargs=kwargs, target=tgt.identity, **common, **opts
            )
    except TaskmasterError as exc:
        _refuse_run(reporter, exc)
        return
    _end_run(reporter, stats)


def _refuse_run(reporter: Any, exc: TaskmasterError) -> None:
    """Exit for an error that ended a run (or kept it from starting)."""
    if reporter is not None:
        reporter.close()
    if isinstance(exc, GeneratorError) and exc.traceback_text:
        click.echo(exc.traceback_text.rstrip(), err=True)
    _fail(str(exc), exc.exit_code)


def _end_run(reporter: Any, stats: RunStats) -> None:
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


def _count_jobs(count_jobs: Any, kwargs: dict[str, str]) -> int | None:
    try:
        return int(count_jobs(**kwargs))
    except Exception as exc:  # only the ETA depends on it: warn and go on
        click.echo(f"taskmaster: warning: count_jobs() failed ({exc!r}); no ETA", err=True)
        return None


def _dry_run(get_jobs: Any, kwargs: dict[str, str], count: int) -> None:
    source = call_get_jobs(get_jobs, kwargs)
    jobs = source.pull(count, max_wait=float("inf"))
    for seq, job in enumerate(jobs):
        click.echo(f"{seq}\t{short_repr(job)}")
    if source.error is not None:
        click.echo(source.error.traceback_text.rstrip(), err=True)
        _fail(str(source.error), source.error.exit_code)
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
    try:
        path = state_file or find_state_file()
        click.echo(render(read_status(path, failures_file or failures_file_for(path))))
    except TaskmasterError as exc:
        _fail(str(exc), exc.exit_code)


def main() -> None:  # pragma: no cover - exercised through the console script
    run_command(prog_name="tm-run")


__all__ = ["run_command", "main", "EXIT_USAGE"]
