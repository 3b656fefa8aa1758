"""taskmaster: run huge numbers of one-off jobs from a resumable generator.

import taskmaster
stats = taskmaster.run(get_jobs, handle_job, workers=4, state_file="jobs.state.json")
"""

from taskmaster.core.stats import RunStats
from taskmaster.errors import (
    CheckpointError,
    GeneratorError,
    LockedError,
    StateIOError,
    TargetError,
    TaskmasterError,
    UsageError,
)
from taskmaster.options import Options
from taskmaster.runner import run

__all__ = [
    "run",
    "RunStats",
    "Options",
    "TaskmasterError",
    "UsageError",
    "TargetError",
    "CheckpointError",
    "StateIOError",
    "LockedError",
    "GeneratorError",
]
__version__ = "0.1.0"
