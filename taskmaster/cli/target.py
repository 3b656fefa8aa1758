"""Loading the user's job module from a path or a dotted name, and parsing KEY=VALUE."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from taskmaster.core.code import JobCode
from taskmaster.errors import TargetError, UsageError
from taskmaster.record import record


@record
class Target:
    """The functions of a job module, and the name that identifies it in checkpoints."""

    name: str  # module name, e.g. "example" or "mypkg.jobs"
    stem: str  # for default file names
    module: ModuleType
    get_jobs: Callable[..., Any] | None
    handle_job: Callable[[Any], Any] | None
    setup_worker: Callable[[], Any] | None = None
    teardown_worker: Callable[[], Any] | None = None
    count_jobs: Callable[..., Any] | None = None
    handle_batch: Callable[[list[Any]], Any] | None = None

    def code(self, kwargs: dict[str, str]) -> JobCode:
        """The bundle of this module's code for the workers, with the run's KEY=VALUE."""
        return JobCode(
            self.handle_job, self.handle_batch, self.setup_worker, self.teardown_worker, kwargs
        )

    @property
    def identity(self) -> str:
        fn = self.get_jobs
        return f"{self.name}:{getattr(fn, '__name__', 'get_jobs')}"


def _user_traceback(exc: BaseException) -> str:
    """The traceback of an exception, without importlib's and taskmaster's frames."""
    import traceback  # when the user's module failed to load: not on every start

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in f.filename and not f.filename.startswith(here)
    ]
    lines = traceback.format_list(frames) + traceback.format_exception_only(exc)
    return "Traceback (most recent call last):\n" + "".join(lines)


def _import_path(path: str) -> ModuleType:
    if not os.path.isfile(path):
        hint = "" if path.endswith(".py") else " (for a module, check that it is importable)"
        raise TargetError(f"no such file: {path}{hint}")
    name = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the job module can import its neighbours
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so pickle finds classes defined in it
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        raise TargetError(f"importing {path} failed:\n{_user_traceback(exc)}") from None
    return module


def _import_dotted(name: str) -> ModuleType:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise TargetError(
                f"no module named {name!r}: give a file path (jobs.py) or a module on the "
                "Python path (mypkg.jobs)"
            ) from None
        raise TargetError(f"importing {name} failed:\n{_user_traceback(exc)}") from None
    except BaseException as exc:
        raise TargetError(f"importing {name} failed:\n{_user_traceback(exc)}") from None


def load_module(spec: str) -> tuple[str, ModuleType]:
    """Import ``spec`` (``jobs.py``, ``dir/jobs.py`` or ``pkg.jobs``); returns (name, module)."""
    if spec.endswith(".py") or os.sep in spec or os.path.isfile(spec):
        module = _import_path(spec)
    else:
        module = _import_dotted(spec)
    return module.__name__, module


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"jobs.py:fn"`` -> ``("jobs.py", "fn")``; ``"jobs.py"`` -> ``("jobs.py", None)``."""
    if ":" in spec:
        mod, _, fn = spec.rpartition(":")
        if mod and fn.isidentifier():
            return mod, fn
    return spec, None


def _function(
    module: ModuleType, origin: str, name: str, required: bool
) -> Callable[..., Any] | None:
    where, fn_name = split_spec(name)
    if fn_name is not None:
        module = load_module(where)[1]
        origin, name = where, fn_name
    fn = getattr(module, name, None)
    if fn is None:
        if not required:
            return None
        found = sorted(
            n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
        )
        has = ", ".join(found) if found else "no functions"
        raise TargetError(
            f"{origin} has no function {name!r} (it has: {has}). Define {name}(), or name "
            f"another with --{name.replace('_', '-')} NAME."
        )
    if not callable(fn):
        raise TargetError(f"{origin}: {name} is a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]


def load_target(
    spec: str,
    get_jobs: str = "get_jobs",
    handle_job: str = "handle_job",
    *,
    need_get_jobs: bool = True,
    need_handle_job: bool = True,
) -> Target:
    """Load a job module; ``spec`` may name one function (``jobs.py:fn``) for one role."""
    path, fn = split_spec(spec)
    if fn is not None:
        if need_get_jobs and not need_handle_job:
            get_jobs = fn
        elif need_handle_job and not need_get_jobs:
            handle_job = fn
        else:
            raise UsageError(
                f"{spec}: name the module, not one function; pick functions with "
                "--get-jobs NAME and --handle-job NAME"
            )
    name, module = load_module(path)
    stem = name.rpartition(".")[2]
    handle_batch = _function(module, path, "handle_batch", False) if need_handle_job else None
    if handle_batch is not None and handle_job == "handle_job":
        need_handle_job = False  # handle_job, if there too, is the fallback for a failed batch
    target = Target(
        name=name,
        stem=stem,
        module=module,
        get_jobs=_function(module, path, get_jobs, need_get_jobs),
        handle_job=_function(module, path, handle_job, need_handle_job),
        setup_worker=_function(module, path, "setup_worker", False),
        teardown_worker=_function(module, path, "teardown_worker", False),
        count_jobs=_function(module, path, "count_jobs", False),
        handle_batch=handle_batch,
    )
    _check_async_hooks(target, path)
    return target


def _check_async_hooks(target: Target, origin: str) -> None:
    """An ``async def`` setup/teardown runs on the worker's asyncio loop, which only an
    ``async def handle_job`` (without ``handle_batch``) has."""
    handler_async = target.handle_batch is None and inspect.iscoroutinefunction(target.handle_job)
    for hook in (target.setup_worker, target.teardown_worker):
        if hook is None or handler_async or not inspect.iscoroutinefunction(hook):
            continue
        name = getattr(hook, "__name__", "setup_worker")
        why = (
            "the module has handle_batch, which runs on threads"
            if target.handle_batch is not None
            else "handle_job is not async def"
        )
        raise TargetError(
            f"{origin}: {name} is async def, but {why}: an async {name} runs on the "
            f"asyncio loop of an async def handle_job. Make {name} a plain def, or make "
            "handle_job async def (without handle_batch)."
        )


def parse_kwargs(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``, with a clear error for anything else."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(
                f"argument {item!r} is not KEY=VALUE: extra arguments after the target and "
                "the worker count are passed to get_jobs as KEY=VALUE (e.g. table=users)"
            )
        if key in out:
            raise UsageError(f"{key}= is given twice ({out[key]!r} and {value!r})")
        if key == "last":
            raise UsageError("last= is reserved: taskmaster passes it when a run resumes")
        out[key] = value
    return out
