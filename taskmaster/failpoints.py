"""Named crash points for tests, read once from ``TASKMASTER_FAILPOINTS``.

``TASKMASTER_FAILPOINTS="ckpt.after_fsync=kill@2,parent.after_ack=sleep(0.5)"``: at the
2nd pass through ``ckpt.after_fsync`` the process SIGKILLs itself. Unset, ``hit`` costs a
dict lookup; it is never called per job.
"""

from __future__ import annotations

import os
import re
import signal
import time

_SPEC = re.compile(
    r"^(?P<name>[\w.]+)=(?P<action>kill|raise|sleep\((?P<secs>[\d.]+)\))(@(?P<n>\d+))?$"
)


def _parse(text: str) -> dict[str, tuple[str, float, int]]:
    points: dict[str, tuple[str, float, int]] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = _SPEC.match(item)
        if m is None:
            raise ValueError(f"bad TASKMASTER_FAILPOINTS entry {item!r}")
        action = m["action"].split("(")[0]
        points[m["name"]] = (action, float(m["secs"] or 0), int(m["n"] or 1))
    return points


_points = _parse(os.environ.get("TASKMASTER_FAILPOINTS", ""))
_counts: dict[str, int] = {}


def hit(name: str) -> None:
    """Run the action configured for ``name`` if this is its configured pass."""
    if not _points or name not in _points:
        return
    action, secs, nth = _points[name]
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "sleep":
        time.sleep(secs)
    else:
        raise OSError(5, f"failpoint {name}")
