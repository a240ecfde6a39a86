"""A review's decisions (accept / reject) on a sample folder: read it once, then write only through here.

:func:`save_decisions` is the one writer of a reviewed folder's ``samples.csv`` (the napari Review tab
calls it; it never writes the file itself). It writes only when the folder still holds the tiles and
decisions the review was shown (their fingerprint, :func:`..formats.records.folder_fingerprint`), so a
folder sampled into again, or whose ``samples.csv`` was rewritten elsewhere, is refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

from ..base.errors import HistodiffError

REOPEN = "open the folder again (Open sample folder…)"


def open_sample_folder(folder) -> tuple:
    """The tiles (N, H, W, 3), records and fingerprint of a sample folder (``histodiff sample``)."""
    import numpy as np

    from ..data.tiles import read_rgb
    from ..formats.records import RECORDS_FILE, folder_fingerprint, read_records

    folder = Path(folder)
    if not (folder / RECORDS_FILE).is_file():
        raise HistodiffError(f"{folder} is not a sample folder (it has no {RECORDS_FILE}): open a folder written by "
                             "`histodiff sample` or the Sample widget")
    records = read_records(folder)
    if not records:
        raise HistodiffError(f"{folder} holds no tiles; sample into it first")
    files = [r.file for r in records]
    before = folder_fingerprint(folder, files)
    from ..base.names import inside

    tiles = [read_rgb(inside(folder, f, f"{folder / RECORDS_FILE}")) for f in files]
    if len({t.shape for t in tiles}) > 1:
        raise HistodiffError(f"the tiles of {folder} differ in size; was the folder changed by hand? Sample again")
    after = folder_fingerprint(folder, files)
    if after != before or read_records(folder) != records:
        raise HistodiffError(f"{folder} changed while it was opened (is a sampling writing to it?); open it again")
    return np.stack(tiles), records, after


def check_unchanged(folder, records, fingerprint: dict | None, name: str = "the review") -> dict:
    """The folder's fingerprint now, after checking that it still holds the tiles (and decisions) of
    ``fingerprint``; raises :class:`HistodiffError` otherwise. ``fingerprint`` None (taken before they
    were stored): the folder is adopted only when its ``samples.csv`` says exactly what ``records`` say."""
    from ..formats.records import folder_fingerprint, read_records, same_records

    folder = Path(folder)
    files = [r.file for r in records]
    if fingerprint is None:
        try:
            same = same_records(read_records(folder), records)
        except HistodiffError:
            same = False
        if not same:
            raise HistodiffError(f"the sample folder {folder} behind {name} no longer holds the tiles it shows "
                                 f"(sampled again into it?); nothing was written: {REOPEN}")
        return folder_fingerprint(folder, files)
    now = folder_fingerprint(folder, files)
    if now["tiles"] != fingerprint["tiles"]:
        raise HistodiffError(f"the sample folder {folder} behind {name} was replaced after it was loaded (sampled "
                             "again into it?): its tiles are not the ones shown, so nothing was written. To review "
                             f"the tiles it holds now, {REOPEN}")
    if now["records"] != fingerprint["records"]:
        raise HistodiffError(f"the decisions in {folder} (samples.csv) were changed after {name} was loaded (by "
                             "another layer, `histodiff select` or by hand), so nothing was written. To review its "
                             f"current decisions, {REOPEN}")
    return now


def save_decisions(folder, records, fingerprint: dict | None, name: str = "the review") -> dict:
    """Write ``records`` (their ``kept``) as the folder's ``samples.csv`` after :func:`check_unchanged`;
    returns the new fingerprint (to pass to the next call)."""
    from ..base.lock import folder_lock
    from ..formats.records import RECORDS_FILE, folder_fingerprint, write_records

    folder = Path(folder)
    with folder_lock(folder, f"napari ({name})"):  # no sampling or selection writes it meanwhile
        check_unchanged(folder, records, fingerprint, name)
        write_records(folder / RECORDS_FILE, records)
        return folder_fingerprint(folder, [r.file for r in records])
