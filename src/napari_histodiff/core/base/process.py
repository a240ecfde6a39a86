"""Run a job's generator in a spawned process: its progress events come back over a pipe, pause / resume /
stop are messages it acts on between two events, and everything it prints goes to a log file.

The process is spawned (not forked: a fork of a GUI with threads is unsafe), so the job's function and
arguments must pickle; it ends with the job, which frees all its memory (GPU memory included). A stop
closes the job's generator in the child, so its clean-up (a resumable checkpoint, removing partial output)
runs there; the child also stops that way when the parent goes away (the pipe closes)."""

from __future__ import annotations

import atexit
import os
import pickle
import time
import weakref
from pathlib import Path

from .errors import HistodiffError

FINAL = ("done", "stopped", "failed")
KEEP_LOGS = 30  # our own logs kept in the log folder (older ones are removed)
_LIVE: weakref.WeakSet = weakref.WeakSet()


class JobCrashed(HistodiffError):
    """The job's process ended without a result (killed, or it crashed in native code)."""


def log_folder() -> Path:
    """Where job logs go: ``$HISTODIFF_LOG_DIR`` or ``~/histodiff/logs``."""
    return Path(os.environ.get("HISTODIFF_LOG_DIR") or Path.home() / "histodiff" / "logs")


def new_log(name: str) -> Path:
    """A fresh log file path for a job called ``name``; the oldest of our logs beyond KEEP_LOGS are removed."""
    folder = log_folder()
    folder.mkdir(parents=True, exist_ok=True)
    ours = sorted(folder.glob("histodiff-*.log"), key=lambda p: p.stat().st_mtime)
    for old in ours[:max(0, len(ours) - KEEP_LOGS + 1)]:
        old.unlink(missing_ok=True)
    stem, n = f"histodiff-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}", 0
    while (folder / f"{stem}-{n}.log").exists():
        n += 1
    return folder / f"{stem}-{n}.log"


def child_threads() -> int:
    """Torch threads for a job beside a GUI: ``$OMP_NUM_THREADS`` when set, else the cores this process may
    use less one for the viewer."""
    from .threads import cores_available, plan_threads

    return plan_threads(cores=max(1, cores_available() - 1))


class ChildJob:
    """``gen_func(*args)`` in a spawned process. ``start()``, then ``send("pause" | "resume" | "stop")`` at any
    moment from any thread, and read :meth:`reports` in one thread."""

    def __init__(self, gen_func, args=(), log: Path | None = None, threads: int | None = None):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.log = Path(log) if log is not None else new_log(getattr(gen_func, "__name__", "job"))
        self._conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_child_main, name=f"histodiff-{getattr(gen_func, '__name__', 'job')}",
                                   args=(child, gen_func, tuple(args), str(self.log), threads))
        self._child_conn = child
        self.outcome = None

    def start(self) -> None:
        import sys
        import types

        # spawn re-imports the parent's main module in the child (napari's entry script imports napari
        # and Qt); the job needs none of it, so the child is started with an empty one
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            self.process.start()
        finally:
            sys.modules["__main__"] = main
        self._child_conn.close()
        _LIVE.add(self)

    def send(self, message: str) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError):  # the child has ended
            pass

    def reports(self, wait: float | None = None):
        """``(kind, value)`` as the child reports: ``("event", e)``, ``("paused", None)``, ``("resumed", None)``,
        and last one of ``("done", result)``, ``("stopped", None)``, ``("failed", exception)``; a child that
        ends without one gives ``("failed", JobCrashed)`` naming its log. With ``wait``, ``("idle", None)``
        when nothing came within ``wait`` seconds."""
        while self.outcome is None:
            try:
                if wait is not None and not self._conn.poll(wait):
                    yield "idle", None
                    continue
                kind, value = self._conn.recv()
            except (EOFError, OSError):
                break
            except Exception as e:  # noqa: BLE001 - a result that does not unpickle here
                kind, value = "failed", HistodiffError(f"the job's result could not be read: {e}")
            if kind in FINAL:
                self.outcome = (kind, value)
            else:
                yield kind, value
        self.process.join(timeout=30)
        if self.outcome is None:
            code = self.process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self.outcome = ("failed", JobCrashed(f"the job's process ended unexpectedly ({how}); what it printed "
                                                 f"is in its log: {self.log}"))
        self._conn.close()
        yield self.outcome

    def stop_and_wait(self, timeout: float = 600) -> None:
        """Ask the child to stop and wait for its clean-up (then end it by force)."""
        self.send("stop")
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


@atexit.register
def _stop_children():
    """The parent is exiting: running jobs stop with their clean-up (before multiprocessing joins them)."""
    for job in list(_LIVE):
        if job.process.is_alive():
            job.stop_and_wait(timeout=120)


# -- in the child ------------------------------------------------------------------------------

def _requests(conn, paused: bool) -> tuple[bool, bool]:
    """Read the parent's messages (the last of pause / resume wins); while paused, wait for the next ones.
    Returns (stop, paused)."""
    reported = False
    while True:
        while conn.poll():
            message = conn.recv()
            if message == "stop":
                return True, paused
            paused = message == "pause"
        if not paused:
            if reported:
                conn.send(("resumed", None))
            return False, False
        if not reported:
            conn.send(("paused", None))
            reported = True
        conn.poll(None)  # wait for a message


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a HistodiffError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return HistodiffError(f"{type(exc).__name__}: {exc}")


def _child_main(conn, gen_func, args, log: str, threads: int | None) -> None:
    import dataclasses
    import faulthandler
    import sys
    import traceback

    with open(log, "a", buffering=1) as out:
        os.dup2(out.fileno(), 1)  # native code's output too
        os.dup2(out.fileno(), 2)
        sys.stdout = sys.stderr = out
        faulthandler.enable(out)
        print(f"histodiff job {getattr(gen_func, '__qualname__', gen_func)} (pid {os.getpid()}, "
              f"{threads or 'shared'} threads) started {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
        if threads:  # asked for; else the user's OMP_NUM_THREADS, else shared with the viewer and our jobs
            os.environ["OMP_NUM_THREADS"] = str(threads)
        elif not os.environ.get("OMP_NUM_THREADS"):
            os.environ["HISTODIFF_RESERVE_CORES"] = "1"  # one core for the viewer (base.threads)

        from .guard import guarded

        opts = args[0] if args and dataclasses.is_dataclass(args[0]) else None
        gen, paused, outcome = None, False, None
        try:
            gen = guarded(gen_func(*args), opts, f"napari ({getattr(gen_func, '__name__', 'job')})")
            while outcome is None:
                stop, paused = _requests(conn, paused)
                if stop:
                    gen.close()  # the job's clean-up: a resumable checkpoint
                    outcome = ("stopped", None)
                    break
                try:
                    event = next(gen)
                except StopIteration as done:
                    outcome = ("done", done.value)
                    break
                conn.send(("event", event))
        except (EOFError, BrokenPipeError):  # the parent went away: stop with the clean-up
            outcome = ("stopped", None)
        except Exception as e:  # noqa: BLE001 - reported to the parent
            traceback.print_exc()
            outcome = ("failed", _portable(e))
        finally:
            if gen is not None:
                gen.close()
        print(f"histodiff job ended: {outcome[0]} {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
        try:
            conn.send(outcome)
        except (OSError, ValueError):
            pass
        except Exception as e:  # noqa: BLE001 - a result that does not pickle
            conn.send(("failed", HistodiffError(f"the job's result could not be sent back: {e}")))
