"""Tiles in WebDataset-style tar shards (``histodiff tiles --shard-size``), read one member at a time.

Each shard holds ``KEY.png`` (or ``.tif``) and ``KEY.json`` (with the tile's ``class``). Opening a
set lists the members' offsets once (tar headers only); a tile is then one seek and one read.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from ..base.errors import HistodiffError, TileReadError
from ..base.names import check_class_name
from .tiles import TileSet, _fit_square, to_rgb_uint8

IMAGES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def shard_files(path) -> list[Path]:
    """The shards of a folder (``*.tar``, sorted) or one ``.tar`` file."""
    path = Path(path)
    return sorted(path.glob("*.tar")) if path.is_dir() else [path]


class ShardTiles(TileSet):
    """The tiles of tar shards; classes from the members' JSON (``class``), when every tile has one."""

    def __init__(self, shards, tile_size: int, scale: float | None = None):
        self.shards, self.tile_size, self.scale = [Path(s) for s in shards], int(tile_size), scale
        entries, classes = [], []
        for k, shard in enumerate(self.shards):
            try:
                with tarfile.open(shard) as tar:
                    members = {m.name: m for m in tar.getmembers() if m.isfile()}
                    for name, m in members.items():
                        stem, dot, ext = name.rpartition(".")
                        if dot and "." + ext.lower() in IMAGES:
                            meta = members.get(stem + ".json")
                            cls = json.loads(tar.extractfile(meta).read()).get("class", "") if meta else ""
                            if cls != "":
                                check_class_name(cls, f"{stem}.json in shard {shard}")
                            entries.append((k, m.offset_data, m.size, f"{shard.name}:{name}"))
                            classes.append(cls)
            except HistodiffError:
                raise
            except (OSError, tarfile.TarError, ValueError) as e:
                raise HistodiffError(f"cannot read shard {shard}: {e}; it is damaged or not a tar file "
                                     "(write it again with `histodiff tiles --shard-size`)") from None
        if not entries:
            raise HistodiffError(f"no tile images in the shards {', '.join(map(str, self.shards))}")
        self.entries = entries
        labelled = all(classes)
        self.class_names = sorted(set(classes)) if labelled else []
        index = {c: i for i, c in enumerate(self.class_names)}
        self.labels = np.array([index[c] for c in classes], np.int64) if labelled else None
        self.description = f"{len(self.shards)} tar shard(s) from {self.shards[0].parent}"

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> np.ndarray:
        from PIL import Image

        k, offset, size, name = self.entries[self._index(i)]
        with open(self.shards[k], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        try:
            rgb = to_rgb_uint8(np.asarray(Image.open(io.BytesIO(data))), name=name)
        except (OSError, ValueError) as e:
            raise TileReadError(f"cannot read tile {name}: {e}; write the shard again") from None
        return _fit_square(rgb, self.tile_size, self.scale)

    def groups(self) -> np.ndarray:
        """The shard of each tile (processes of a multi-process run read disjoint shards)."""
        return np.array([e[0] for e in self.entries], np.int64)

    def label(self, i: int) -> int | None:
        return None if self.labels is None else int(self.labels[self._index(i)])

    def origin(self, i: int) -> str:
        return self.entries[self._index(i)][3]
