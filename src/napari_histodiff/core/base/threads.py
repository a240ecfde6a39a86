"""Threads that fit: each process uses its share of the cores it may run on, and reading workers
take theirs out of it instead of competing with the compute threads.

Our jobs running at once on one machine (two CLI runs, napari's job process beside a CLI run) share
the cores: each registers while it runs (:func:`shared_threads`), and each sizes its threads from the
number of our jobs alive, again every few seconds, so a job that starts or ends resizes the others.

Oversubscribed cores are slow: with another process busy on the same two cores, a 60-step autoencoder
run took 19.1 s with torch's default threads and 10.1 s with one thread.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

_serial = itertools.count()


def cores_available() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset, cgroups or Slurm)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _positive(value) -> int | None:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def plan_threads(num_workers: int = 0, env=None, cores: int | None = None, jobs: int | None = None) -> int:
    """Compute threads for this process: ``OMP_NUM_THREADS`` when set; else the cores available (less
    ``HISTODIFF_RESERVE_CORES``, e.g. one for the napari viewer) divided among the processes of this
    machine under a launcher (``LOCAL_WORLD_SIZE``, else ``WORLD_SIZE``) or among our jobs running now
    (``jobs``, default: :func:`running_jobs`), whichever is more, less the ``num_workers`` data-loading
    processes; at least 1."""
    env = os.environ if env is None else env
    omp = _positive(env.get("OMP_NUM_THREADS"))
    if omp is not None:
        return omp
    cores = cores_available() if cores is None else cores
    reserve = _positive(env.get("HISTODIFF_RESERVE_CORES")) or 0
    cores = max(1, cores - reserve) if cores > reserve else 1
    local = _positive(env.get("LOCAL_WORLD_SIZE")) or _positive(env.get("WORLD_SIZE")) or 1
    jobs = running_jobs() if jobs is None else jobs
    return max(1, cores // max(local, jobs) - max(0, num_workers))


def _registry() -> Path:
    from .lock import lock_folder

    folder = lock_folder() / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


_mine: set = set()  # this process's registered jobs


def running_jobs() -> int:
    """How many of our jobs run on this machine now: those registered by :func:`shared_threads` and alive,
    and this process's when it has not registered one."""
    try:
        entries = list(_registry().glob("*.job"))
    except OSError:
        return 1
    from .atomic import alive

    n = 0
    for entry in entries:
        pid = _positive(entry.stem.split("-")[0])
        if pid and alive(pid):
            n += 1
        else:
            entry.unlink(missing_ok=True)  # a job that died without unregistering
    return n + (0 if _mine else 1)


REFIT_SECONDS = 2.0


def shared_threads(gen, num_workers: int = 0):
    """Run the job generator ``gen`` registered as one of our running jobs, with its threads resized to
    its share of the cores at the start and every :data:`REFIT_SECONDS` while it runs."""
    import time

    from .events import relay

    try:
        entry = _registry() / f"{os.getpid()}-{next(_serial)}.job"
        entry.write_text("")
        _mine.add(entry)
    except OSError:
        entry = None
    last = [0.0]

    def refit(event):
        if time.monotonic() - last[0] > REFIT_SECONDS:
            fit_threads(num_workers)
            last[0] = time.monotonic()

    try:
        return (yield from relay(gen, refit))
    finally:
        gen.close()
        if entry is not None:
            _mine.discard(entry)
            entry.unlink(missing_ok=True)


def fit_threads(num_workers: int = 0) -> int:
    """Set torch's threads for this process from :func:`plan_threads`; returns the count. Called at
    the start of every job (DataLoader workers set one thread each themselves)."""
    import torch

    n = plan_threads(num_workers)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
