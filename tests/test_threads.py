"""Threads that fit the cores a process may use, shared under a launcher and with reading workers."""

import os

import pytest
import torch

from napari_histodiff.core.base import threads as T

CLEAN = ("OMP_NUM_THREADS", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


@pytest.fixture()
def env(monkeypatch):
    for name in CLEAN:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_threads_follow_the_affinity_mask(env):
    env.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert T.cores_available() == 6
    assert T.plan_threads() == 6
    assert T.plan_threads(num_workers=2) == 4  # reading workers do not compete with the compute threads
    assert T.plan_threads(num_workers=10) == 1


def test_omp_num_threads_wins(env):
    env.setenv("OMP_NUM_THREADS", "3")
    assert T.plan_threads(cores=16) == 3
    assert T.plan_threads(num_workers=2, cores=16) == 3
    env.setenv("OMP_NUM_THREADS", "nonsense")
    assert T.plan_threads(cores=16) == 16


def test_processes_under_a_launcher_share_the_cores(env):
    assert T.plan_threads(env={"WORLD_SIZE": "4"}, cores=16) == 4
    assert T.plan_threads(env={"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2"}, cores=16) == 8
    assert T.plan_threads(env={"LOCAL_WORLD_SIZE": "32"}, cores=16) == 1
    assert T.plan_threads(num_workers=1, env={"LOCAL_WORLD_SIZE": "4"}, cores=16) == 3


def test_fit_threads_sets_torch_and_every_job_calls_it(env, monkeypatch):
    before = torch.get_num_threads()
    env.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    try:
        assert T.fit_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    import inspect

    from napari_histodiff.core.jobs import JOBS

    for job in JOBS:
        if job.name in ("tiles", "export", "info"):  # no torch compute: reading, writing, describing
            continue
        source = inspect.getsource(job._load(job.function))
        assert "fit_threads(" in source, job.name


def test_our_running_jobs_share_the_cores(env, tmp_path):
    import subprocess
    import sys

    from napari_histodiff.core.base.events import run_to_end

    assert T.running_jobs() == 1  # this test's own lock folder: nobody else
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (T._registry() / f"{other.pid}-0.job").write_text("")  # another of our jobs, alive
        (T._registry() / "999999999-0.job").write_text("")  # one that died without unregistering
        assert T.running_jobs() == 2 and not (T._registry() / "999999999-0.job").exists()
        assert T.plan_threads(cores=2) == 1 and T.plan_threads(cores=8) == 4
        env.setenv("HISTODIFF_RESERVE_CORES", "1")  # napari's job process leaves a core to the viewer
        assert T.plan_threads(cores=8) == 3
        env.delenv("HISTODIFF_RESERVE_CORES")
        seen = []

        def job():
            for _ in range(3):
                seen.append((T.running_jobs(), torch.get_num_threads()))
                yield 1
            return "done"

        env.setattr(T, "cores_available", lambda: 4)
        env.setattr(T, "REFIT_SECONDS", 0.0)
        assert run_to_end(T.shared_threads(job())) == "done"
        assert seen[-1] == (2, 2)  # registered while it runs, resized to 4 cores // 2 jobs
        assert T.running_jobs() == 2  # unregistered after
        other.kill()
        other.wait()
        assert T.running_jobs() == 1
    finally:
        other.kill()
        torch.set_num_threads(T.plan_threads())
