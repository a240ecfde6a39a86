"""The load job: check a model and describe it for the GUI, without keeping its weights there."""

from __future__ import annotations

from pathlib import Path

from ..base.events import Progress
from ..base.threads import fit_threads

__all__ = ["load_model", "open_handle"]


def load_model(source, device=None, config=None, ema=None):
    """Open ``source`` once to check it (checksums, parts that fit together), then let the weights go;
    returns a :class:`~..formats.handle.ModelHandle` whose folder jobs open. A foreign checkpoint is first
    converted into a bundle in the user's cache (once per checkpoint version and options)."""
    from ..base.devices import pick_device
    from ..base.errors import HistodiffError
    from ..formats.convert import convert_to_bundle, detect_format
    from ..formats.handle import converted_folder, describe_folder
    from ..formats.starter import resolve_model
    from .sample import open_checked

    fit_threads()
    device = pick_device(device)  # an unknown device fails before anything is read
    source = resolve_model(source)  # a built-in model's name: its folder in the package
    fmt = detect_format(source)
    path, origin = Path(source), None
    if fmt == "bundle":
        if config is not None or ema is not None:
            raise HistodiffError(f"{source} is a napari-histodiff bundle; config and ema apply to CompVis "
                                 ".ckpt checkpoints only")
    else:
        from ..base.owner import owned
        from ..formats.integrity import verify_bundle

        origin, path = path, converted_folder(source, config, ema)
        if not (owned(path, "bundle") and not verify_bundle(path, checksums=False)):
            yield Progress("converting", 0, 1, message=f"converting {origin.name} into a bundle in {path.parent}")
            intent = "overwrite" if path.exists() else "new"
            convert_to_bundle(origin, path, format=fmt, config=config, ema=ema, intent=intent)
    yield Progress("checking", 0, 1, message=f"checking {path}")
    open_checked(path, "cpu")  # every check a job makes, then the weights go
    return describe_folder(path, device, source=origin)


def open_handle(source, device=None, config=None, ema=None):
    """:func:`load_model` run to its end: the handle of ``source``."""
    from ..base.events import run_to_end

    return run_to_end(load_model(source, device, config, ema))
