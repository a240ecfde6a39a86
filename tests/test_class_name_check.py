"""A class name without a visible character is refused where class names enter, naming where (issue 31,
item 7): class sub-folders of a tile folder, tar shards, tiles in memory (napari), the labeled tiles of a
fine-tuning, the napari class table; one check, ``core.base.names.check_class_name``."""

import io
import json
import tarfile
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.names import check_class_name

BLANK = ["", "   ", "\t", "\u3000", "\u200b ", "\n"]


@pytest.mark.parametrize("name", BLANK)
def test_blank_class_names_are_refused_naming_where(name):
    with pytest.raises(HistodiffError, match=r"^class folder /d/x: the class name .* is empty or only white space"):
        check_class_name(name, "class folder /d/x")


@pytest.mark.parametrize("name", ["TUM\nSTR", "a\tb", "x\x00"])
def test_control_characters_are_refused(name):
    with pytest.raises(HistodiffError, match="control character"):
        check_class_name(name, "option --class")


@pytest.mark.parametrize("name", ["TUM", "Tumör ✓", "Tumor/Positive", " padded ", "..", "0"])
def test_visible_names_pass_unchanged(name):
    assert check_class_name(name, "x") == name


def _tile(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.full((16, 16, 3), 128, np.uint8))


def test_a_tile_folder_with_a_blank_class_folder_is_refused(tmp_path):
    from napari_histodiff.core.data.tiles import TileFolder

    _tile(tmp_path / "TUM" / "a.png")
    _tile(tmp_path / "   " / "b.png")
    with pytest.raises(HistodiffError) as e:
        TileFolder(tmp_path, 16)
    assert str(e.value).startswith(f"class folder {tmp_path / '   '}: the class name '   ' is empty")
    (tmp_path / "   " / "b.png").rename(tmp_path / "TUM" / "b.png")
    (tmp_path / "   ").rmdir()
    assert TileFolder(tmp_path, 16).class_names == ["TUM"]


def test_a_shard_tile_with_a_blank_class_is_refused(tmp_path):
    from napari_histodiff.core.data.shards import ShardTiles

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("t0.png", iio.imwrite("<bytes>", np.zeros((16, 16, 3), np.uint8), extension=".png")),
                           ("t0.json", json.dumps({"class": " "}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(HistodiffError, match=rf"t0.json in shard {shard}: the class name ' ' is empty"):
        ShardTiles([shard], 16)


def test_tiles_in_memory_and_labeled_tiles_refuse_a_blank_class():
    from napari_histodiff.core.data.tiles import ArrayTiles
    from napari_histodiff.core.train.finetune import check_labeled

    tiles = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(HistodiffError, match="^layer Shapes: the class name ' ' is empty"):
        ArrayTiles(tiles, [0, 0, 1, 1], ["TUM", " "], description="layer Shapes")
    class Fake(SimpleNamespace):  # a tile set whose class names came from anywhere (a plugin, a reader)
        def __len__(self):
            return 4

        def label(self, i):
            return int(self.labels[i])

    fake = Fake(class_names=["TUM", "\u3000"], labels=np.array([0, 0, 1, 1]), description="my tiles")
    with pytest.raises(HistodiffError, match=r"^my tiles: the class name '\\u3000' is empty"):
        check_labeled(fake, 2)
    ok = ArrayTiles(tiles, [0, 0, 1, 1], ["TUM", "Tumör ✓"])
    assert check_labeled(ok, 2) == {"TUM": 2, "Tumör ✓": 2}


def test_the_napari_class_table_refuses_a_blank_name():
    pytest.importorskip("qtpy")
    from napari_histodiff.widgets.classes import _check_name

    for name in ("  ", "\u200b"):
        with pytest.raises(HistodiffError, match="^the class table: the class name .* is empty"):
            _check_name(name)
    assert _check_name(" STR ") == "STR"
