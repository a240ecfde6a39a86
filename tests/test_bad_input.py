"""Silly input is named, never silently trained on: empty classes, odd tile sizes, grey tiles, NaN."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_histodiff.core.base.errors import HistodiffError, TileReadError
from napari_histodiff.core.data.annotations import tiles_from_labels
from napari_histodiff.core.data.survey import image_header, survey_warnings
from napari_histodiff.core.data.opening import open_tiles
from napari_histodiff.core.data.tiles import ImageTiles, TileFolder, read_rgb


def _write(folder, n, size, mode="RGB", suffix=".png", seed=0):
    """n random tiles of size (w, h) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = (size, size) if isinstance(size, int) else size
    for i in range(n):
        a = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{folder.name}_{seed}_{i}{suffix}")


def test_empty_class_folder_is_named(tmp_path):
    _write(tmp_path / "TUM", 2, 32)
    (tmp_path / "STR").mkdir()
    (tmp_path / "STR" / "notes.txt").write_text("no tiles here")
    (tmp_path / ".git").mkdir()  # hidden and __MACOSX-style folders are not classes
    (tmp_path / "__MACOSX").mkdir()
    with pytest.raises(HistodiffError) as e:
        TileFolder(tmp_path, 32)
    msg = str(e.value)
    assert str(tmp_path / "STR") in msg and "class STR" in msg
    assert "add tiles to it or remove the folder" in msg.lower()
    (tmp_path / "ADI").mkdir()
    with pytest.raises(HistodiffError, match="classes ADI, STR would have no tiles"):
        open_tiles([tmp_path], 32)
    (tmp_path / "STR" / "notes.txt").unlink()
    (tmp_path / "STR").rmdir()
    (tmp_path / "ADI").rmdir()
    assert TileFolder(tmp_path, 32).class_names == ["TUM"]  # other behaviour kept


def test_small_tiles_beside_full_size_named_per_class(tmp_path):
    _write(tmp_path / "TUM", 3, 8)
    _write(tmp_path / "TUM", 5, 32, seed=1)
    _write(tmp_path / "STR", 4, 32)
    _write(tmp_path / "STR", 1, 8, seed=1)
    _write(tmp_path / "STR", 1, 16, seed=2)  # exactly 2x smaller: not named
    out = survey_warnings(TileFolder(tmp_path, 32))
    assert len(out) == 2, out
    assert out[0].startswith("class STR: 1 of 6 tiles are 8x8 px, more than 2x smaller than the model's 32 px")
    assert out[1].startswith("class TUM: 3 of 8 tiles are 8x8 px") and "upscaled (blurred)" in out[1]
    assert survey_warnings(tmp_path, 32) == out  # folder paths work too


def test_class_size_cue_and_large_tiles(tmp_path):
    _write(tmp_path / "ADI", 3, (100, 140))  # shorter side 100 > 2 x 32
    _write(tmp_path / "LYM", 3, 32)
    out = survey_warnings(tmp_path, 32)
    assert out[0].startswith("class ADI: 3 of 3 tiles are 100x140 px, more than 2x larger")
    assert "{opt:scale}" in out[0]
    assert len(out) == 2 and out[1].startswith("classes differ in native tile size: class LYM tiles are resized 1x")
    assert "class ADI tiles 0.32x (100 px)" in out[1] and "class cue" in out[1]
    # at scale 0.5 the centre 64 px is cut from each tile: LYM 1x, ADI 0.5x, not more than 2x apart
    assert survey_warnings(tmp_path, 32, scale=0.5) == []
    # at scale 0.25 a 128 px cut is wanted: the 32 px LYM tiles are upscaled 4x beyond it
    out = survey_warnings(tmp_path, 32, scale=0.25)
    assert out[0] == ("class LYM: 3 of 3 tiles are 32x32 px, more than 2x smaller than the 128 px cut per 32 px "
                      "tile at {opt:scale}: they are upscaled (blurred). Re-cut them at 128 px or more, or remove "
                      "them.")
    assert len(out) == 2 and out[1].startswith("classes differ")


def test_grayscale_in_colour_set_counted(tmp_path):
    _write(tmp_path / "STR", 17, 32)
    _write(tmp_path / "STR", 3, 32, mode="L", seed=1)
    tifffile.imwrite(tmp_path / "STR" / "grey.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "STR" / "rgb.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    _write(tmp_path / "TUM", 2, 32)
    out = survey_warnings(tmp_path, 32)
    assert out == [("class STR: 4 of 22 tiles are grayscale in a colour set; they are converted to RGB (grey), "
                    "which the model can learn as a cue. Re-export them in colour or remove them.")]
    grey_only = tmp_path / "grey"
    _write(grey_only, 3, 32, mode="L")
    assert survey_warnings(grey_only, 32) == []  # an all-grey set is consistent


def test_healthy_set_has_no_warnings(tmp_path):
    _write(tmp_path / "TUM", 4, 32)
    _write(tmp_path / "STR", 4, (40, 36), suffix=".jpg")
    tifffile.imwrite(tmp_path / "STR" / "x.tif", np.zeros((3, 32, 32), np.uint8), photometric="rgb",
                     planarconfig="separate")
    assert image_header(tmp_path / "STR" / "x.tif") == (32, 32, False)
    assert survey_warnings(TileFolder(tmp_path, 32)) == []
    img = np.zeros((64, 64, 3), np.uint8)
    assert survey_warnings(ImageTiles(img, 32, tissue_filter=False)) == []  # cut at tile size already


def test_unreadable_header_named(tmp_path):
    _write(tmp_path / "TUM", 1, 32)
    (tmp_path / "TUM" / "junk.png").write_text("not a png")
    with pytest.raises(TileReadError, match="junk.png"):
        survey_warnings(tmp_path, 32)


def test_nan_float_tiff_is_an_error(tmp_path):
    f = np.full((16, 16), 0.5, np.float32)
    f[:3, :4] = np.nan
    f[5, 5] = np.inf
    tifffile.imwrite(tmp_path / "f.tif", f)
    with pytest.raises(TileReadError) as e:
        read_rgb(tmp_path / "f.tif")
    msg = str(e.value)
    assert "f.tif" in msg and "12 NaN pixels (and 1 inf)" in msg and "fill or mask" in msg.lower()
    f[:3, :4] = 0.5
    with pytest.raises(TileReadError, match="1 inf .* pixel and no NaN"):
        ImageTiles(f, 8, name="layer")  # in memory, as from napari


def test_nan_in_annotated_window_is_an_error():
    image = np.full((32, 32, 3), 0.5, np.float32)
    image[20, 20] = np.nan
    labels = np.zeros((32, 32), np.int32)
    labels[16:, 16:] = 1
    with pytest.raises(TileReadError, match="1 NaN pixel"):
        tiles_from_labels(image, labels, {1: "TUM"}, 16)
    image[20, 20] = 0.5
    assert len(tiles_from_labels(image, labels, {1: "TUM"}, 16)) == 1
