"""The original taskmaster example: a resumable range of integers.

tm-run examples/example.py 2
tm-run examples/example.py 2 --resume      # after Ctrl-C or a crash
tm-run examples/example.py 2 count=5000    # KEY=VALUE reach get_jobs as strings
"""

import time


def get_jobs(last=0, count="2000000", **kwargs):
    # `last` is the job a resumed run starts from: yield it again, then what follows.
    yield from range(int(last), int(count))


def handle_job(job):
    # Must be idempotent: a resumed run may repeat the jobs of the last checkpoint interval.
    if job % 400_000 == 0:
        time.sleep(0.001)  # stand-in for real work
