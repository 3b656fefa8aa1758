"""The user's code for the workers, bundled once and passed whole to every kind of worker."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from taskmaster.errors import UsageError
from taskmaster.record import field, record


@record
class JobCode:
    """handle_job, handle_batch, setup_worker, teardown_worker and the run's KEY=VALUE.

    Built once (by the CLI from the job module, or by ``taskmaster.run`` from its
    arguments) and handed unchanged to local workers, slaves and actors, so that
    ``setup_worker`` gets the same arguments however the run is started.
    """

    handle_job: Callable[[Any], Any] | None
    handle_batch: Callable[[list[Any]], Any] | None = None
    setup_worker: Callable[..., Any] | None = None
    teardown_worker: Callable[[], Any] | None = None
    kwargs: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> None:
        if self.handle_job is None and self.handle_batch is None:
            raise UsageError("running jobs needs a handle_job (or handle_batch) function")

    @property
    def is_async(self) -> bool:
        return self.handle_batch is None and inspect.iscoroutinefunction(self.handle_job)

    def setup(self) -> Callable[[], Any] | None:
        """setup_worker, called with the KEY=VALUE arguments when it takes any."""
        fn = self.setup_worker
        if fn is None:
            return None
        if self.kwargs and _takes_arguments(fn):
            kwargs = dict(self.kwargs)
            return lambda: fn(**kwargs)
        return fn


def _takes_arguments(fn: Callable[..., Any]) -> bool:
    try:
        return bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
