"""User-facing errors: one plain message that names the problem and the fix.

A message may refer to an option as ``{opt:field}`` or ``{opt:field=value}``; ``str()`` shows the
field name, the CLI its flag and napari its label (:func:`refs`)."""

import re



class HistodiffError(ValueError):
    """Bad input or state that the user can fix. The CLI prints it and exits with code 2."""

    @property
    def raw(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return plain(self.raw)


class TileReadError(HistodiffError):
    """An image file could not be read or converted to RGB."""


class BundleError(HistodiffError):
    """A model bundle folder is missing parts or its parts do not fit together."""


REF = re.compile(r"\{opt:([a-z_]+)(?:=([^}]*))?\}")


def refs(text: str, show_field, show_value=None) -> str:
    """Replace option references ``{opt:field}`` / ``{opt:field=value}`` in a core message."""
    def sub(m):
        name, value = m.group(1), m.group(2)
        if value is None:
            return show_field(name)
        return show_value(name, value) if show_value else f"{show_field(name)}={value}"
    return REF.sub(sub, text)


def plain(text: str) -> str:
    """A core message with option references as field names (``intent=overwrite``)."""
    return refs(text, lambda name: name)
