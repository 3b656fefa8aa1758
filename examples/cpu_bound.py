"""A CPU-bound handler: count the primes in a block of integers, in pure Python.

Pure Python code holds the GIL, so threads do not help here: use one worker process per
core and one thread each, which are the defaults (``--workers`` = the CPU count,
``--threads 1``).

    tm-run examples/cpu_bound.py                    # as many workers as cores, 1 thread each
    tm-run examples/cpu_bound.py "$(nproc)" --threads 1 count=2000
    tm-run examples/cpu_bound.py --resume           # after Ctrl-C or kill -9

Job ``n`` is the block ``[n * 1,000, (n + 1) * 1,000)``. The count of primes is printed
for every 200th block; a real handler would store its result (idempotently).
"""

from __future__ import annotations

from collections.abc import Iterator

BLOCK = 1_000


def get_jobs(last: int | None = None, count: str = "2000") -> Iterator[int]:
    """Blocks 0 .. count-1, from ``last`` (inclusive) on."""
    yield from range(last or 0, int(count))


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


def count_primes(block: int) -> int:
    """How many primes there are in ``block``."""
    return sum(map(is_prime, range(block * BLOCK, (block + 1) * BLOCK)))


def handle_job(block: int) -> None:
    primes = count_primes(block)
    if block % 200 == 0:
        print(f"block {block}: {primes} primes in [{block * BLOCK:,}, {(block + 1) * BLOCK:,})")
