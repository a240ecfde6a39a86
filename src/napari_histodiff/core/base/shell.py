"""Commands suggested to the user in messages, quoted so that they run as shown in a POSIX shell."""

from __future__ import annotations

import shlex


def command(*words) -> str:
    """``histodiff`` and ``words`` as one shell command line, each word quoted where it needs it
    (``command("sample", Path("my run"))`` -> ``histodiff sample 'my run'``)."""
    return shlex.join(["histodiff", *map(str, words)])
