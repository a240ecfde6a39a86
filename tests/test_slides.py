"""Slides: lazy region reads at a level, thumbnails, mpp, errors (core/data/slides.py)."""

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.data.slides import is_slide_file, open_slide

SVS = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "cmu_small_region.svs"
RED, BLUE = (200, 30, 40), (20, 40, 210)


def _image(h=1024, w=1536):
    a = np.full((h, w, 3), 255, np.uint8)
    a[256:512, 512:768] = RED
    a[700:900, 100:180] = BLUE
    a[0:40, 0:1536:7] = (0, 128, 0)  # fine stripes make misplaced reads visible
    return a


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """BigTIFF, tiled 256, zlib (lossless), levels in SubIFDs at 1, 1/2, 1/4; 20000 px/cm = 0.5 µm."""
    path, data = tmp_path_factory.mktemp("slides") / "pyramid.tif", _image()
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(data, tile=(256, 256), compression="zlib", photometric="rgb", subifds=2,
                 resolution=(20000, 20000), resolutionunit="CENTIMETER")
        for k in (2, 4):
            tw.write(data[::k, ::k], tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=1)
    return path, data


def test_pyramid_levels_mpp_and_regions(pyramid):
    path, data = pyramid
    with open_slide(path) as s:
        assert s.format == "tiff" and s.path == path
        assert s.dimensions == [(1536, 1024), (768, 512), (384, 256)]
        assert s.downsamples == [1.0, 2.0, 4.0]
        assert s.mpp == pytest.approx(0.5) and s.mpp_source == "file" and s.objective_power is None
        np.testing.assert_array_equal(s.read_region(0, 500, 250, 40, 30), data[250:280, 500:540])
        np.testing.assert_array_equal(s.read_region(0, 3, 1, 300, 45), data[1:46, 3:303])
        # (x, y) in level-0 pixels, (w, h) in level pixels
        np.testing.assert_array_equal(s.read_region(1, 500, 250, 20, 15), data[::2, ::2][125:140, 250:270])
        np.testing.assert_array_equal(s.read_region(2, 1000, 600, 30, 60), data[::4, ::4][150:210, 250:280])
        assert s.read_region(0, 600, 300, 4, 4).tolist() == [[list(RED)] * 4] * 4


def test_outside_the_slide_is_white(pyramid):
    path, data = pyramid
    with open_slide(path) as s:
        r = s.read_region(0, 1500, 1000, 100, 50)
        np.testing.assert_array_equal(r[:24, :36], data[1000:, 1500:])
        assert (r[24:] == 255).all() and (r[:, 36:] == 255).all()
        r = s.read_region(1, -20, -40, 30, 30)  # level 1: 10 px left, 20 px above
        np.testing.assert_array_equal(r[20:, 10:], data[::2, ::2][:10, :20])
        assert (r[:20] == 255).all() and (r[:, :10] == 255).all()
        assert (s.read_region(0, 5000, 5000, 8, 8) == 255).all()
        assert s.read_region(0, 0, 0, 0, 5).shape == (5, 0, 3)


def test_thumbnail_comes_from_a_low_level(pyramid):
    path, _ = pyramid
    with open_slide(path) as s:
        levels = []
        read = s._read_level
        s._read_level = lambda level, *a: levels.append(level) or read(level, *a)
        t = s.thumbnail(200)
        assert t.shape == (133, 200, 3) and t.dtype == np.uint8
        assert set(levels) == {2}  # 384 px wide: the smallest level at least 200 px
        assert tuple(t[50, 83]) == RED and tuple(t[104, 18]) == BLUE and tuple(t[120, 150]) == (255,) * 3
        levels.clear()
        assert s.thumbnail(1536).shape == (512, 768, 3) and set(levels) == {1}  # never level 0 of a pyramid
        levels.clear()
        assert s.thumbnail(64).shape == (43, 64, 3) and set(levels) == {2}


def test_best_level_and_mpp_override(pyramid):
    path, _ = pyramid
    with open_slide(path, mpp=0.25) as s:
        assert s.mpp == 0.25 and s.mpp_source == "given"
        assert [s.best_level(d) for d in (0.5, 1, 1.5, 1.99, 2, 3.9, 4, 100)] == [0, 0, 0, 1, 1, 1, 2, 2]
    for bad in (0, -1, float("nan"), "x"):
        with pytest.raises(HistodiffError, match="mpp must be a positive number"):
            open_slide(path, mpp=bad)


def test_level_array_slices_match_read_region(pyramid):
    import dask.array as da

    path, data = pyramid
    with open_slide(path) as s:
        la = s.level_array(1)
        assert la.shape == (512, 768, 3) and la.dtype == np.uint8 and la.ndim == 3
        region = s.read_region(1, 500, 250, 20, 15)
        np.testing.assert_array_equal(la[125:140, 250:270], region)
        np.testing.assert_array_equal(la[130, 250:270:3], region[5, ::3])
        np.testing.assert_array_equal(la[139:124:-2, 250:270, 0], region[::-2, :, 0])
        np.testing.assert_array_equal(la[..., 2][125:140, 250:270], region[..., 2])
        assert la[0:0, 0:0, 0:0].shape == (0, 0, 0)
        lazy = da.from_array(s.level_array(0), chunks=(256, 256, 3))
        np.testing.assert_array_equal(lazy[250:280, 500:540].compute(), data[250:280, 500:540])


@pytest.mark.parametrize("size, unit", [(0.25, "\u00b5m"), (0.25, "\u03bcm"), (250, "nm"), (2.5e-4, "mm")],
                         ids=["micro-sign", "greek-mu", "nm", "mm"])
def test_ome_tiff_pyramid(tmp_path, size, unit):
    path = tmp_path / "slide.ome.tif"
    data = _image(600, 800)
    planar = np.moveaxis(data, -1, 0)  # (C, H, W)
    meta = {"axes": "CYX", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit,
            "PhysicalSizeY": size, "PhysicalSizeYUnit": unit}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(planar, tile=(256, 256), compression="zlib", photometric="rgb", subifds=1, metadata=meta)
        tw.write(planar[:, ::2, ::2], tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=1)
    with open_slide(path) as s:
        assert s.format == "ome-tiff" and s.dimensions == [(800, 600), (400, 300)]
        assert s.mpp == pytest.approx(0.25) and s.mpp_source == "file"
        np.testing.assert_array_equal(s.read_region(0, 480, 230, 60, 50), data[230:280, 480:540])
        np.testing.assert_array_equal(s.read_region(1, 480, 230, 60, 50), data[::2, ::2][115:165, 240:300])


def test_pyramid_levels_further_apart_than_4x(tmp_path):
    """tifffile links only 2-4x levels; a 8x SubIFD level is still found."""
    path, data = tmp_path / "far.tif", _image(512, 512)
    with tifffile.TiffWriter(path) as tw:
        tw.write(data, tile=(256, 256), compression="zlib", photometric="rgb", subifds=1)
        tw.write(data[::8, ::8], compression="zlib", photometric="rgb", subfiletype=1)
    with open_slide(path) as s:
        assert s.dimensions == [(512, 512), (64, 64)] and s.downsamples == [1.0, 8.0]
        assert s.mpp is None and s.mpp_source == "unknown"  # tifffile's default 1 px/inch is no scale
        np.testing.assert_array_equal(s.read_region(1, 256, 128, 32, 32), data[::8, ::8][16:48, 32:64])


def test_gray_16bit_and_transparent_tiffs(tmp_path):
    gray = np.zeros((300, 200), np.uint16)
    gray[100:200] = 257 * 100
    tifffile.imwrite(tmp_path / "gray.tif", gray)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:32] = (10, 20, 30, 255)  # top half opaque, bottom half transparent
    tifffile.imwrite(tmp_path / "rgba.tiff", rgba, photometric="rgb", extrasamples=[2])
    with open_slide(tmp_path / "gray.tif") as s:
        assert s.dimensions == [(200, 300)] and s.format == "tiff"
        r = s.read_region(0, 10, 90, 5, 20)
        assert r.dtype == np.uint8 and (r[:10] == 0).all() and (r[10:] == 100).all()
    with open_slide(tmp_path / "rgba.tiff") as s:
        r = s.read_region(0, 0, 30, 4, 4)
        assert r[:2].tolist() == [[[10, 20, 30]] * 4] * 2 and (r[2:] == 255).all()


def test_micrometre_spellings_of_ome_xml():
    """Issue 27.7: 'µm' spelled with U+03BC (Greek mu) left µm/px unknown."""
    from napari_histodiff.core.data.slides import _unit

    for spelling in ("\u00b5m", "\u03bcm", "&#181;m", "&#956;m", "um", "micron", " \u03bcm ", None):
        assert _unit(spelling) == 1.0, spelling
    assert _unit("nm") == 1e-3 and _unit("pixel") is None


@pytest.mark.parametrize("layout", ["interleaved", "planar"])  # our tile reader, and tifffile's zarr store
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_empty_tiles_of_a_tiled_tiff_read_white(tmp_path, layout, compression):
    """Issue 27.7: tiles a scanner left out (offset and byte count 0) read black, not white as glass."""
    path, t = tmp_path / "sparse.tif", 256
    planar = layout == "planar"

    def tiles():
        for k in range(3 * 4 if planar else 4):
            if k % 4 == 1:  # the top-right tile (of each plane) is not written
                yield None
            else:
                yield np.full((t, t) if planar else (t, t, 3), 90, np.uint8)

    with tifffile.TiffWriter(path) as tw:
        tw.write(tiles(), shape=(3, 2 * t, 2 * t) if planar else (2 * t, 2 * t, 3), dtype=np.uint8, tile=(t, t),
                 photometric="rgb", compression=compression, planarconfig="separate" if planar else "contig")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.databytecounts[1] == 0  # really an empty tile
    with open_slide(path) as s:
        region = s.read_region(0, t - 8, 0, 16, 16)
        assert (region[:, :8] == 90).all() and (region[:, 8:] == 255).all()
        assert (s.read_region(0, t, t, 8, 8) == 90).all()
        assert (s.thumbnail(64)[:32, 32:] == 255).all() and (s.thumbnail(64)[32:, 32:] == 90).all()


def test_plain_png_is_one_level(tmp_path):
    from PIL import Image

    data = _image(120, 160)
    Image.fromarray(data).save(tmp_path / "small.png")
    with open_slide(tmp_path / "small.png", mpp=0.5) as s:
        assert s.format == "image" and s.dimensions == [(160, 120)] and s.downsamples == [1.0]
        assert s.mpp == 0.5 and s.mpp_source == "given"
        np.testing.assert_array_equal(s.read_region(0, 150, 100, 20, 30)[:20, :10], data[100:, 150:])
        assert s.thumbnail(80).shape == (60, 80, 3)


def test_aperio_svs():
    if not SVS.is_file():
        pytest.skip(f"{SVS} not present")
    with open_slide(SVS) as s:
        assert s.format == "aperio" and s.dimensions == [(2220, 2967)] and s.downsamples == [1.0]
        assert s.mpp == pytest.approx(0.499) and s.mpp_source == "file" and s.objective_power == 20
        r = s.read_region(0, 1000, 1000, 64, 64)
        assert r.shape == (64, 64, 3) and r.dtype == np.uint8
        mean = r.reshape(-1, 3).mean(0)
        assert mean.mean() < 220 and mean[1] < mean[0] - 20 and mean[1] < mean[2] - 10  # pink / purple H&E
        np.testing.assert_array_equal(s.level_array(0)[1000:1064, 1000:1064], r)
        edge = s.read_region(0, 2200, 2950, 64, 64)  # past the corner: white
        assert (edge[17:] == 255).all() and (edge[:, 20:] == 255).all() and not (edge[:17, :20] == 255).all()
        t = s.thumbnail(256)
        assert t.shape == (256, 192, 3)


def test_is_slide_file():
    assert all(is_slide_file(n) for n in ("a.svs", "b.NDPI", "c.ome.tiff", "d.tif", "e.mrxs", "f.png"))
    assert not any(is_slide_file(n) for n in ("a.txt", "b.zarr", "c.svs.txt", "tiff"))


def test_errors_name_the_file(tmp_path, pyramid):
    odd = tmp_path / "scan.xyz"
    odd.write_bytes(b"x")
    with pytest.raises(HistodiffError, match=r"scan\.xyz.*'\.xyz' is not a slide format.*\.svs.*\.ome\.tiff"):
        open_slide(odd)
    with pytest.raises(HistodiffError, match=r"gone\.svs: no such file"):
        open_slide(tmp_path / "gone.svs")
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(HistodiffError, match=r"garbage\.svs: OpenSlide cannot read it.*copy it again"):
        open_slide(garbage)
    head = tmp_path / "head.tif"
    head.write_bytes(pyramid[0].read_bytes()[:100])
    with pytest.raises(HistodiffError, match=r"head\.tif: tifffile cannot read it.*truncated"):
        open_slide(head)
    cut = tmp_path / "cut.tif"  # header and first IFD intact, tile data cut off
    cut.write_bytes(pyramid[0].read_bytes()[:6000])
    s = open_slide(cut)
    with s, pytest.raises(HistodiffError, match=r"cut\.tif.*damaged or truncated"):
        s.read_region(0, 0, 0, 1536, 1024)


def test_one_region_of_a_huge_slide_decodes_only_its_tiles(tmp_path):
    """20000 x 20000 px (1.2 GB decoded, ~2 MB on disk): one 256 px region stays far below 50 MB."""
    n, t = 20000, 256
    white, green = np.full((t, t, 3), 255, np.uint8), np.full((t, t, 3), (10, 200, 30), np.uint8)

    def tiles(size):
        k = -(-size // t)
        return (green if (i, j) == (40, 41) else white for i in range(k) for j in range(k))

    path = tmp_path / "huge.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles(n), shape=(n, n, 3), dtype=np.uint8, tile=(t, t), compression="zlib", photometric="rgb",
                 subifds=1)
        tw.write(tiles(n // 4), shape=(n // 4, n // 4, 3), dtype=np.uint8, tile=(t, t), compression="zlib",
                 photometric="rgb", subfiletype=1)
    assert path.stat().st_size < 10e6
    tracemalloc.start()
    try:
        with open_slide(path) as s:
            assert s.dimensions == [(n, n), (n // 4, n // 4)]
            r = s.read_region(0, 41 * t - 128, 40 * t, t, t)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (r[:, :128] == 255).all() and (r[:, 128:] == (10, 200, 30)).all()
    assert peak < 50e6, f"peak {peak / 1e6:.0f} MB"


def test_tiles_read_from_many_threads_match_serial_reads(tmp_path):
    """napari loads a slide layer's tiles from several threads at once: seek + read of the shared file
    must not interleave (tifffile's file lock is off by default; corrupt reads showed as zlib errors)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    path = tmp_path / "noisy.tif"
    tifffile.imwrite(path, rng.integers(0, 256, (2048, 2048, 3), dtype=np.uint8), tile=(128, 128),
                     compression="zlib", photometric="rgb")
    slide = open_slide(path, mpp=0.5)
    boxes = [(int(x), int(y)) for x, y in rng.integers(0, 2048 - 300, (200, 2))]
    expected = tifffile.imread(path)
    for _ in range(3):  # a fresh cache each round, so the threads read the file
        slide = open_slide(path, mpp=0.5)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda b: slide.read_region(0, b[0], b[1], 300, 300), boxes))
        for (x, y), g in zip(boxes, got):
            np.testing.assert_array_equal(g, expected[y:y + 300, x:x + 300])
