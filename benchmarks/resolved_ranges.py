"""Resolved ranges: what a checkpoint listing many finished batches costs on resume.

A checkpoint lists the batches finished above the watermark. A resume loads them and, as
it pulls, looks up the next one at every pull. That search was a scan of all of them, so
N ranges cost N^2 (40,000 ranges took 194 s here); it is a bisect now. In-process, on
the checkpoint and ledger code only (no workers): decode a state file with N ranges of one
job each, every other seq, then walk a resumed ledger past all of them as the coordinator
does (open a unit up to the next range, skip the range).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

# The key that signs checkpoints: a throwaway one, never the user's own.
os.environ.setdefault("TASKMASTER_KEY_FILE", os.path.join(tempfile.mkdtemp(), "state.key"))


def measure(n: int) -> tuple[float, float]:
    from taskmaster.core.ledger import Ledger, ResolvedRange
    from taskmaster.store import checkpoint

    ranges = tuple(ResolvedRange(s, s + 1, None) for s in range(1, 2 * n, 2))
    state = checkpoint.State(target="t", kwargs={}, resolved=ranges, window=2 * n + 1)
    data = checkpoint.encode(state)
    t0 = time.perf_counter()
    back = checkpoint.decode(data)
    t1 = time.perf_counter()
    ledger = Ledger.resume(0, back.resolved)
    while (start := ledger.next_resolved_start()) is not None:
        if start > ledger.next_seq:
            ledger.open_unit([None] * (start - ledger.next_seq))
        rng = ledger.resolved_range_at(ledger.next_seq)
        assert rng is not None
        ledger.skip_resolved(rng.end - rng.start, None)
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 ranges, not 40,000")
    args = parser.parse_args()
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 40_000)
    print("## Resolved ranges on resume (in-process, best of 3)\n")
    print("| ranges | decode the checkpoint | walk the ledger past them |")
    print("|---:|---:|---:|")
    for n in sizes:
        try:
            runs = [measure(n) for _ in range(3)]
        except Exception as exc:  # a broken taskmaster is a row, not a crash
            print(f"| {n:,} | taskmaster: not available ({type(exc).__name__}: {exc}) | |")
            continue
        decode = min(r[0] for r in runs)
        walk = min(r[1] for r in runs)
        print(f"| {n:,} | {decode * 1e3:,.1f} ms | {walk * 1e3:,.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
