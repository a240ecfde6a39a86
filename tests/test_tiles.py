"""Tile reading, conversion, tissue masks and tile sets (core/tiles.py)."""

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_histodiff.core.data import tiles
from napari_histodiff.core.base.errors import HistodiffError, TileReadError
from napari_histodiff.core.data.opening import open_tiles
from napari_histodiff.core.data.tiles import (
    ConcatTiles, ImageTiles, TileFolder, read_rgb, split_indices, tissue_mask, to_rgb_uint8,
)

SHARED_DATA = Path(os.environ.get("HISTODIFF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _tissue(h, w, seed=0):
    """Pink/purple H&E-like texture (saturation 0.15-0.6)."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 120, 190], np.float32)
    nuclei = rng.random((h, w)) < 0.15
    img = base + rng.normal(0, 12, (h, w, 3))
    img[nuclei] = np.array([90, 60, 150]) + rng.normal(0, 10, (nuclei.sum(), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _glass(h, w, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(244, 2.5, (h, w, 3)), 0, 255).astype(np.uint8)


# ---------- conversions ----------

def test_conversions_in_memory():
    g = np.array([[0, 128], [255, 7]], np.uint8)
    out = to_rgb_uint8(g)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert (out == g[..., None]).all()
    assert (to_rgb_uint8(g[..., None]) == out).all()
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255]], [[0, 0, 0, 128], [200, 100, 0, 51]]], np.uint8)
    out = to_rgb_uint8(rgba)
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert out[0, 1].tolist() == [10, 20, 30]  # opaque unchanged
    assert out[1, 0].tolist() == [127, 127, 127]  # half black on white
    assert out[1, 1].tolist() == [244, 224, 204]  # 0.2 alpha: 200*.2+255*.8 = 244
    la = np.array([[[0, 0], [100, 255]]], np.uint8)
    assert to_rgb_uint8(la).tolist() == [[[255] * 3, [100] * 3]]
    u16 = np.array([[0, 257, 65535, 32896]], np.uint16)
    assert to_rgb_uint8(u16)[0, :, 0].tolist() == [0, 1, 255, 128]
    f = np.array([[0.0, 0.5, 1.0, 0.2]], np.float32)
    assert to_rgb_uint8(f)[0, :, 1].tolist() == [0, 128, 255, 51]
    assert to_rgb_uint8(np.array([[True, False]]))[0, :, 2].tolist() == [255, 0]
    assert to_rgb_uint8(np.array([[3, 250]], np.int64))[0, :, 0].tolist() == [3, 250]


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.array([[0.0, 1.5]]), "[0, 1]"),
        (np.array([[-0.1, 0.5]]), "[0, 1]"),
        (np.array([[np.nan, 0.5]]), "1 NaN pixel"),
        (np.array([[np.inf, -np.inf, 0.5]]), "2 inf (infinite) pixels and no NaN"),
        (np.zeros((4, 4, 5), np.uint8), "channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "multi-page"),
        (np.array([[0, 300]], np.int32), "8 bits"),
    ],
)
def test_conversion_errors_name_problem(bad, words):
    with pytest.raises(TileReadError, match="my-layer") as e:
        to_rgb_uint8(bad, name="my-layer")
    assert words in str(e.value)


def test_read_rgb_file_formats(tmp_path):
    g = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    iio.imwrite(tmp_path / "g.png", g)
    assert (read_rgb(tmp_path / "g.png") == g[..., None]).all()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 50
    rgba[:4, :, 3] = 255
    iio.imwrite(tmp_path / "a.png", rgba)
    out = read_rgb(tmp_path / "a.png")
    assert (out[:4] == [50, 0, 0]).all() and (out[4:] == 255).all()
    u16 = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    u16[0, 0] = 65535
    tifffile.imwrite(tmp_path / "u16.tif", u16)
    out = read_rgb(tmp_path / "u16.tif")
    assert out[0, 0].tolist() == [255] * 3 and out[0, 1, 0] == round(1000 / 257)
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    tifffile.imwrite(tmp_path / "f.tiff", f)
    assert (read_rgb(tmp_path / "f.tiff")[..., 0] == np.round(f * 255)).all()
    tifffile.imwrite(tmp_path / "bad.tif", f * 3)
    with pytest.raises(TileReadError, match="bad.tif"):
        read_rgb(tmp_path / "bad.tif")
    rgb = np.random.default_rng(0).integers(0, 256, (3, 16, 20), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    out = read_rgb(tmp_path / "planar.tif")
    assert out.shape == (16, 20, 3) and (out == np.moveaxis(rgb, 0, -1)).all()
    iio.imwrite(tmp_path / "c.jpg", np.full((16, 16, 3), [200, 100, 150], np.uint8), quality=95)
    out = read_rgb(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3) and np.abs(out.astype(int) - [200, 100, 150]).max() <= 3


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_names_file(tmp_path, suffix):
    p = tmp_path / f"cut{suffix}"
    iio.imwrite(p, _tissue(64, 64))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(TileReadError) as e:
        read_rgb(p)
    msg = str(e.value)
    assert f"cut{suffix}" in msg and "truncated or not an image" in msg and "re-export" in msg


def test_not_an_image_and_missing(tmp_path):
    (tmp_path / "notes.png").write_text("hello, not a PNG")
    with pytest.raises(TileReadError, match="notes.png"):
        read_rgb(tmp_path / "notes.png")
    with pytest.raises(TileReadError, match="no such file"):
        read_rgb(tmp_path / "nope.png")


# ---------- tissue mask ----------

def test_tissue_mask_synthetic():
    assert tissue_mask(_tissue(128, 128)).mean() > 0.98  # all tissue is not split in half
    assert tissue_mask(_glass(128, 128)).mean() < 0.01  # blank glass yields no tissue
    assert not tissue_mask(np.full((32, 32, 3), 255, np.uint8)).any()
    img = np.concatenate([_tissue(96, 96), _glass(96, 96)], axis=1)
    m = tissue_mask(img)
    assert m[:, :90].mean() > 0.98 and m[:, 102:].mean() < 0.01


# ---------- tile folders ----------

def _write_folder(root):
    rng = np.random.default_rng(0)
    for cls, n in [("TUM", 2), ("ADI", 1)]:
        (root / cls).mkdir(parents=True)
        for k in range(n):
            iio.imwrite(root / cls / f"{cls.lower()}{k}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (root / "ADI" / "deep").mkdir()
    iio.imwrite(root / "ADI" / "deep" / "wide.png", rng.integers(0, 256, (40, 80, 3), dtype=np.uint8))
    iio.imwrite(root / "loose.jpg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (root / "readme.txt").write_text("not a tile")
    (root / ".hidden.png").write_text("macOS junk")


def test_tile_folder_labels_and_shapes(tmp_path, monkeypatch):
    _write_folder(tmp_path)
    calls = []
    real = tiles.read_rgb
    monkeypatch.setattr(tiles, "read_rgb", lambda p: calls.append(p) or real(p))
    ts = TileFolder(tmp_path, 32)
    assert calls == []  # construction keeps paths only
    assert ts.class_names == ["ADI", "TUM"]
    names = [Path(ts.origin(i)).relative_to(tmp_path).as_posix() for i in range(len(ts))]
    assert names == ["ADI/adi0.png", "ADI/deep/wide.png", "TUM/tum0.png", "TUM/tum1.png", "loose.jpg"]
    assert [ts.label(i) for i in range(len(ts))] == [0, 0, 1, 1, None]
    for i in range(len(ts)):
        t = ts[i]
        assert t.shape == (32, 32, 3) and t.dtype == np.uint8
    assert len(calls) == len(ts)
    # exact 32x32 tile passes through unchanged; the 40x80 one is centre-cropped then resized
    assert (ts[0] == read_rgb(tmp_path / "ADI" / "adi0.png")).all()
    wide = read_rgb(tmp_path / "ADI" / "deep" / "wide.png")
    centre = wide[:, 20:60].astype(float).mean()
    assert abs(ts[1].astype(float).mean() - centre) < 3
    assert (ts[-1] == ts[4]).all()
    with pytest.raises(IndexError):
        ts[5]


def test_tile_folder_errors(tmp_path):
    with pytest.raises(HistodiffError, match="does not exist"):
        TileFolder(tmp_path / "missing", 32)
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(HistodiffError, match="not a folder"):
        TileFolder(tmp_path / "f.png", 32)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(HistodiffError, match=r"no image files \(\.png, \.jpg"):
        TileFolder(tmp_path / "empty", 32)


# ---------- large images ----------

def test_image_tiles_drop_background():
    img = np.concatenate([_tissue(256, 256), _glass(256, 256)], axis=1)  # tissue left, glass right
    ts = ImageTiles(img, 64, stride=32, name="syn")
    # grid: 7 rows x 15 cols; tissue-only columns x = 0..192 (7), x = 224 straddles (half) -> kept at 0.5
    xs = sorted({x for _, x in ts.coords})
    assert xs == [0, 32, 64, 96, 128, 160, 192, 224]
    assert len(ts) == 7 * 8
    assert all(x + 64 <= 256 + 32 for _, x in ts.coords)
    assert ts.label(0) is None and ts.class_names == []
    y, x = ts.coords[3]
    assert ts.origin(3) == f"syn@x={x},y={y}"
    assert (ts[3] == img[y : y + 64, x : x + 64]).all()
    strict = ImageTiles(img, 64, stride=32, min_tissue=0.9)
    assert len(strict) == 7 * 7
    assert len(ImageTiles(img, 64, stride=32, tissue_filter=False)) == 7 * 15
    half = ImageTiles(img, 32, scale=0.5)  # 128x256 image -> 4 x 8 grid, left half kept
    assert half.image.shape == (128, 256, 3) and len(half) == 4 * 4


def test_image_tiles_errors(tmp_path):
    with pytest.raises(HistodiffError, match=r"larger than big \(100x50 px") as e:
        ImageTiles(_tissue(50, 100), 64, name="big")
    assert "at most 50 px" in str(e.value) and "larger scale" in str(e.value)
    with pytest.raises(HistodiffError, match="min_tissue"):
        ImageTiles(_glass(128, 128), 64)
    iio.imwrite(tmp_path / "slide.png", _tissue(64, 96))
    ts = ImageTiles(tmp_path / "slide.png", 32)
    assert len(ts) == 6 and ts.origin(0) == f"{tmp_path / 'slide.png'}@x=0,y=0"


# ---------- open_tiles / concat ----------

def test_open_tiles_combines_sources(tmp_path):
    (tmp_path / "a" / "TUM").mkdir(parents=True)
    (tmp_path / "b" / "LYM").mkdir(parents=True)
    (tmp_path / "b" / "TUM").mkdir()
    iio.imwrite(tmp_path / "a" / "TUM" / "1.png", _tissue(32, 32))
    iio.imwrite(tmp_path / "b" / "LYM" / "1.png", _tissue(32, 32, 2))
    iio.imwrite(tmp_path / "b" / "TUM" / "2.png", _tissue(32, 32, 3))
    iio.imwrite(tmp_path / "big.png", _tissue(64, 64))
    ts = open_tiles([tmp_path / "a", str(tmp_path / "b"), tmp_path / "big.png"], 32)
    assert isinstance(ts, ConcatTiles) and len(ts) == 1 + 2 + 4
    assert ts.class_names == ["LYM", "TUM"]
    assert [ts.label(i) for i in range(len(ts))] == [1, 0, 1, None, None, None, None]
    assert ts.origin(6).endswith("big.png@x=32,y=32")
    assert all(t.shape == (32, 32, 3) for t in ts)
    assert isinstance(open_tiles(tmp_path / "a", 32), TileFolder)
    slides = open_tiles(tmp_path / "b", 16, large_images=True)  # each file cut into a 2x2 grid
    assert len(slides) == 8 and slides.class_names == []
    with pytest.raises(HistodiffError, match="different tile sizes"):
        ConcatTiles([TileFolder(tmp_path / "a", 32), TileFolder(tmp_path / "b", 16)])


def test_open_tiles_errors(tmp_path):
    with pytest.raises(HistodiffError, match="no such file or folder: .*nowhere"):
        open_tiles([tmp_path / "nowhere"], 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistodiffError, match="no image files"):
        open_tiles([tmp_path / "empty"], 32)
    with pytest.raises(HistodiffError, match="no image files"):
        open_tiles([tmp_path / "empty"], 32, large_images=True)
    (tmp_path / "x.csv").write_text("x")
    with pytest.raises(HistodiffError, match="not a slide or image file"):
        open_tiles(tmp_path / "x.csv", 32)
    (tmp_path / "x.txt").write_text("x.svs\n")  # a list of slides
    with pytest.raises(HistodiffError, match="lists x.svs, which does not exist"):
        open_tiles(tmp_path / "x.txt", 32)
    with pytest.raises(HistodiffError, match="no tile folder or image given"):
        open_tiles([], 32)


# ---------- split ----------

def test_split_indices():
    tr, ho = split_indices(100, 0.2, seed=3)
    assert len(tr) == 80 and len(ho) == 20
    assert not set(tr) & set(ho) and sorted(np.concatenate([tr, ho])) == list(range(100))
    tr2, ho2 = split_indices(100, 0.2, seed=3)
    assert (tr == tr2).all() and (ho == ho2).all()
    assert not (split_indices(100, 0.2, seed=4)[1] == ho).all()
    assert [len(x) for x in split_indices(2, 0.01, 0)] == [1, 1]  # at least one held out
    assert [len(x) for x in split_indices(1, 0.5, 0)] == [1, 0]  # train never empty
    assert [len(x) for x in split_indices(5, 0.99, 0)] == [1, 4]
    assert [len(x) for x in split_indices(1000, 0.5, 0, max_holdout=16)] == [984, 16]
    assert [len(x) for x in split_indices(10, 0.0, 0)] == [10, 0]
    with pytest.raises(HistodiffError):
        split_indices(0, 0.1, 0)
    with pytest.raises(HistodiffError):
        split_indices(10, 1.0, 0)


# ---------- real H&E data (skipped where ../shared/data is absent) ----------

def _shared(sub):
    p = SHARED_DATA / sub
    if not p.is_dir():
        pytest.skip(f"shared data {p} not available")
    return p


REAL = [
    "pretrain/breast_ucsb/ytma10_010704_malignant1_ccd.jpg",
    "pretrain/breast_ucsb/ytma10_010704_benign2_ccd.jpg",
    "glas/benign/testA_1.jpg",
    "glas/malignant/testA_8.jpg",
]


def _tile_stats(img, m, t):
    """Per grid tile: 25th and 50th percentile of raw saturation, and tissue-mask fraction."""
    mx = img.max(-1).astype(float)
    sat = (mx - img.min(-1)) / np.maximum(mx, 1)
    return np.array([[(*np.percentile(sat[y : y + t, x : x + t], [25, 50]), m[y : y + t, x : x + t].mean())
                      for x in range(0, img.shape[1] - t + 1, t)] for y in range(0, img.shape[0] - t + 1, t)])


@pytest.mark.parametrize("name", REAL)
def test_real_tissue_kept_and_blank_patch_dropped(name):
    path = _shared(name.rsplit("/", 1)[0]) / name.rsplit("/", 1)[1]
    img, t = read_rgb(path), 128
    st = _tile_stats(img, tissue_mask(img), t)
    solid = st[..., 0] > 0.15  # >= 75% of pixels clearly stained: inside tissue
    stained = st[..., 1] > 0.15  # >= 50% clearly stained
    assert stained.sum() >= 4
    assert (st[solid, 2] > 0.8).all() and (st[stained, 2] >= 0.5).all()
    # paste a glass-white patch over stained tiles: its tiles go, the other stained tiles stay
    iy, ix = np.argwhere(stained)[0]
    y0, x0 = iy * t, ix * t
    pasted = img.copy()
    pasted[y0 : y0 + 2 * t, x0 : x0 + 2 * t] = _glass(2 * t, 2 * t)[: img.shape[0] - y0, : img.shape[1] - x0]
    kept = set(ImageTiles(pasted, t, name="real").coords)
    in_patch = lambda y, x: y0 <= y < y0 + 2 * t and x0 <= x < x0 + 2 * t  # noqa: E731
    assert not any(in_patch(y, x) for y, x in kept)
    others = [(y * t, x * t) for y, x in np.argwhere(stained) if not in_patch(y * t, x * t)]
    assert others and all(c in kept for c in others)


def test_real_pale_mucinous_tissue_mostly_kept():
    # GlaS testA_1 is all colon mucosa with much pale goblet-cell mucin (saturation 0.03-0.1);
    # an unclamped Otsu threshold (0.19) or a cap of 0.12 keeps only a third of its 128 px tiles.
    ts = ImageTiles(_shared("glas") / "benign" / "testA_1.jpg", 128)
    assert len(ts) / (4 * 6) >= 0.6


def test_real_background_dropped():
    path = _shared("pretrain/breast_ucsb") / "ytma10_010704_benign2_ccd.jpg"  # glass in the top left
    ts = ImageTiles(path, 128)
    assert (0, 0) not in ts.coords and (128, 128) not in ts.coords
    assert 0.2 < len(ts) / (6 * 7) < 0.8


@pytest.mark.parametrize(
    "sub, classes",
    [
        ("crc_mini", ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]),
        ("crc5", ["AC", "H", "S", "T", "V"]),
    ],
)
def test_real_tile_folders(sub, classes):
    ts = TileFolder(_shared(sub), 224)
    assert ts.class_names == classes
    assert {ts.label(i) for i in range(len(ts))} == set(range(len(classes)))
    for i in (0, len(ts) // 2, len(ts) - 1):
        t = ts[i]
        assert t.shape == (224, 224, 3) and t.dtype == np.uint8
        assert Path(ts.origin(i)).parent.name == classes[ts.label(i)]
    small = TileFolder(_shared(sub), 64)[0]
    assert small.shape == (64, 64, 3)


def test_open_tiles_scale_per_path(tmp_path):
    """One scale per path: each large image is cut at its own magnification."""
    iio.imwrite(tmp_path / "x40.png", _tissue(128, 128))
    iio.imwrite(tmp_path / "x20.png", _tissue(64, 64, 2))
    ts = open_tiles([tmp_path / "x40.png", tmp_path / "x20.png"], 32, scale=[0.5, 1.0])
    assert len(ts) == 4 + 4 and isinstance(ts, ConcatTiles)  # a 2 x 2 grid of 32 px tiles each
    assert [p.image.shape[:2] for p in ts.parts] == [(64, 64), (64, 64)]
    assert len(open_tiles([tmp_path / "x40.png", tmp_path / "x20.png"], 32, scale=[0.5])) == 4 + 1
    with pytest.raises(HistodiffError, match="3 scales for 2 paths"):
        open_tiles([tmp_path / "x40.png", tmp_path / "x20.png"], 32, scale=[1, 0.5, 2])


def test_folder_scale_keeps_magnification(tmp_path):
    """scale 0.5: a 32 px tile is the centre 64 px of a 128 px source, downscaled."""
    import imageio.v3 as iio
    from skimage.transform import resize

    from napari_histodiff.core.data.tiles import TileFolder

    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", src)
    tile = TileFolder(tmp_path, 32, scale=0.5)[0]
    expect = resize(src[32:96, 32:96], (32, 32), order=1, anti_aliasing=True, preserve_range=True)
    assert np.array_equal(tile, np.clip(np.round(expect), 0, 255).astype(np.uint8))
    whole = TileFolder(tmp_path, 32)[0]  # scale 1: the whole tile, fitted
    assert not np.array_equal(tile, whole)
    assert "at scale 0.5" in TileFolder(tmp_path, 32, scale=0.5).description
