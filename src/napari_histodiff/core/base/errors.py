"""User-facing errors: one plain message that names the problem and the fix.

A message may refer to an option as ``{opt:field}`` or ``{opt:field=value}``; ``str()`` shows the
field name, the CLI its flag and napari its label (``base.options.refs``)."""


class HistodiffError(ValueError):
    """Bad input or state that the user can fix. The CLI prints it and exits with code 2."""

    @property
    def raw(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        from .options import plain

        return plain(self.raw)


class TileReadError(HistodiffError):
    """An image file could not be read or converted to RGB."""


class BundleError(HistodiffError):
    """A model bundle folder is missing parts or its parts do not fit together."""
