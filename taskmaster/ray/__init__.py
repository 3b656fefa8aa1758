"""The Ray transport: actors on a Ray cluster as taskmaster's workers.

Ray is an optional extra, imported only inside this subpackage: ``taskmaster.ray.cluster``,
``taskmaster.ray.actor`` and ``taskmaster.ray.transport`` import it at their top, so import
them only once ``ray`` is known to be installed (``taskmaster.ray.available()``).
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'taskmaster-runner[ray]'"


def available() -> bool:
    """Whether the ``ray`` package can be imported here."""
    return importlib.util.find_spec("ray") is not None
