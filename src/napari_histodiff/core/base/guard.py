"""A job's generator as every caller runs it (the CLI, napari's job thread and job process): holding
the lock of the folder it writes, its threads shared with our other jobs, and file-system faults and
out-of-memory named in one line."""

from __future__ import annotations

import dataclasses


def guarded(gen, opts=None, job: str = ""):
    """Wrap the job generator ``gen`` made from the options ``opts`` (a dataclass, or None)."""
    from .fsfaults import guard_filesystem
    from .lock import locked
    from .memory import guard_memory
    from .threads import shared_threads

    options = opts if dataclasses.is_dataclass(opts) else None
    gen = shared_threads(guard_filesystem(gen), getattr(options, "num_workers", 0) or 0)
    if options is not None:
        gen = locked(gen, options, job)
    return guard_memory(gen, options if options is not None else ())
