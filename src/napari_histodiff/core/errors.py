"""User-facing errors: one plain message that names the problem and the fix."""


class HistodiffError(ValueError):
    """Bad input or state that the user can fix. The CLI prints it and exits with code 2."""


class TileReadError(HistodiffError):
    """An image file could not be read or converted to RGB."""


class BundleError(HistodiffError):
    """A model bundle folder is missing parts or its parts do not fit together."""
