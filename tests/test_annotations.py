"""Annotations on an image -> labeled tiles: exact counts, origins and pixels on hand-made data."""

import numpy as np
import pytest

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.data.annotations import (
    check_rgb_image,
    class_counts,
    read_window,
    tiles_from_labels,
    tiles_from_masks,
    tiles_from_points,
)
from napari_histodiff.core.data.tiles import ArrayTiles

CLASSES = {1: "TUM", 2: "STR"}  # -> class_names ["STR", "TUM"]


@pytest.fixture()
def image():
    """128x128 RGB whose pixels encode their position: R = row, G = column, B = 7."""
    y, x = np.mgrid[:128, :128]
    return np.stack([y, x, np.full_like(y, 7)], -1).astype(np.uint8)


@pytest.fixture()
def labels():
    lab = np.zeros((128, 128), np.int32)
    lab[:64, :64] = 1  # a 64x64 block: four full 32 px windows
    lab[64:96, 16:112] = 2  # a 32x96 strip: two full windows, two half-covered ones
    return lab


def _check_pixels(tiles, image):
    for i in range(len(tiles)):
        y, x = (int(v.split("=")[1]) for v in tiles.origin(i).split(","))
        assert np.array_equal(tiles[i], image[y : y + 32, x : x + 32])
        assert (tiles[i][0, 0, 0], tiles[i][0, 0, 1]) == (y, x)


def test_labels_exact_tiles(image, labels):
    t = tiles_from_labels(image, labels, CLASSES, 32, stride=32, min_fraction=0.5)
    assert t.class_names == ["STR", "TUM"] and t.tile_size == 32
    assert t.origins == ["y=0,x=0", "y=0,x=32", "y=32,x=0", "y=32,x=32",
                         "y=64,x=0", "y=64,x=32", "y=64,x=64", "y=64,x=96"]
    assert t.labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert class_counts(t) == {"STR": 4, "TUM": 4}
    assert t.tiles.dtype == np.uint8 and t.tiles.shape == (8, 32, 32, 3)
    _check_pixels(t, image)


def test_labels_min_fraction_drops_partly_covered_windows(image, labels):
    t = tiles_from_labels(image, labels, CLASSES, 32, min_fraction=1.0)
    assert t.origins == ["y=0,x=0", "y=0,x=32", "y=32,x=0", "y=32,x=32", "y=64,x=32", "y=64,x=64"]
    assert class_counts(t) == {"STR": 2, "TUM": 4}
    assert len(tiles_from_labels(image, labels, CLASSES, 32, min_fraction=0.51)) == 6


def test_labels_stride_and_majority_class(image):
    lab = np.zeros((128, 128), np.int32)
    lab[:32, :20], lab[:32, 20:40] = 1, 2  # window (0, 0): 62.5% TUM, 37.5% STR
    t = tiles_from_labels(image, lab, CLASSES, 32, min_fraction=0.5)
    assert t.origins == ["y=0,x=0"] and t.labels.tolist() == [1]
    t = tiles_from_labels(image, lab, CLASSES, 32, stride=16, min_fraction=0.5)
    assert t.origins == ["y=0,x=0", "y=0,x=16"] and t.labels.tolist() == [1, 0]  # (0,16): 4 TUM + 20 STR cols
    _check_pixels(t, image)


def test_label_values_of_one_class_merge(image, labels):
    labels[:64, 16:48] = 3  # split the block into values 1 and 3, both TUM
    t = tiles_from_labels(image, labels, {1: "TUM", 3: "TUM", 2: "STR"}, 32, min_fraction=0.75)
    assert t.class_names == ["STR", "TUM"]
    assert class_counts(t) == {"STR": 2, "TUM": 4}  # 50% value 1 + 50% value 3 = 100% TUM
    t = tiles_from_labels(image, labels, {1: "TUM", 3: "TUM", 0: "BACK"}, 32)
    assert t.class_names == ["TUM"] and len(t) == 4  # 0 is never a class; unmapped value 2 ignored


def test_labels_errors(image, labels):
    with pytest.raises(HistodiffError, match=r"\(100, 128\).*\(128, 128, 3\).*pixel for pixel"):
        tiles_from_labels(image, labels[:100], CLASSES, 32)
    with pytest.raises(HistodiffError, match="empty"):
        tiles_from_labels(image, np.zeros_like(labels), CLASSES, 32)
    with pytest.raises(HistodiffError, match="no class"):
        tiles_from_labels(image, labels, {}, 32)
    with pytest.raises(HistodiffError, match="no tile of 32 px is at least 50% annotated.*lower"):
        tiles_from_labels(image, labels * 5, CLASSES, 32)  # values 5 and 10 have no class
    small = np.zeros_like(labels)
    small[40:50, 40:50] = 1
    with pytest.raises(HistodiffError, match="draw larger regions"):
        tiles_from_labels(image, small, CLASSES, 32)
    with pytest.raises(HistodiffError, match="at most 128 px"):
        tiles_from_labels(image, labels, CLASSES, 256)


def test_masks_two_rectangles(image):
    masks = np.zeros((2, 128, 128), bool)
    masks[0, :64, :64] = True
    masks[1, 64:, 32:96] = True
    t = tiles_from_masks(image, masks, ["TUM", "STR"], 32)
    assert class_counts(t) == {"STR": 4, "TUM": 4}
    assert [t.origin(i) for i in range(len(t)) if t.label(i) == 0] == [
        "y=64,x=32", "y=64,x=64", "y=96,x=32", "y=96,x=64"]
    _check_pixels(t, image)


def test_masks_later_shape_wins(image):
    masks = np.zeros((2, 128, 128), bool)
    masks[0, :64, :64] = True
    masks[1, :32, :32] = True
    t = tiles_from_masks(image, masks, ["TUM", "STR"], 32)
    assert class_counts(t) == {"STR": 1, "TUM": 3} and t.origin(0) == "y=0,x=0" and t.label(0) == 0
    t = tiles_from_masks(image, masks[::-1], ["STR", "TUM"], 32)
    assert class_counts(t) == {"STR": 0, "TUM": 4}  # zero-count class kept


def test_masks_errors(image):
    masks = np.ones((2, 128, 128), bool)
    with pytest.raises(HistodiffError, match="shape 1 has no class name.*`class` feature"):
        tiles_from_masks(image, masks, ["TUM", ""], 32)
    with pytest.raises(HistodiffError, match="one class per shape"):
        tiles_from_masks(image, masks, ["TUM"], 32)
    with pytest.raises(HistodiffError, match="at least one shape"):
        tiles_from_masks(image, masks[:0], [], 32)


def test_points_centred_and_border_skipped(image):
    pts = np.array([[40.0, 50.0], [100.4, 70.6], [5.0, 60.0]])
    t, skipped = tiles_from_points(image, pts, ["TUM", "STR", "TUM"], 32)
    assert skipped == 1 and len(t) == 2
    assert t.origins == ["y=24,x=34", "y=84,x=55"]
    assert t.class_names == ["STR", "TUM"] and t.labels.tolist() == [1, 0]
    assert tuple(t[0][16, 16, :2]) == (40, 50) and tuple(t[1][16, 16, :2]) == (100, 71)
    _check_pixels(t, image)
    with pytest.raises(HistodiffError, match="border"):
        tiles_from_points(image, pts[2:], ["TUM"], 32)
    with pytest.raises(HistodiffError, match="point 1 has no class name"):
        tiles_from_points(image, pts, ["TUM", None, "STR"], 32)


def test_rgba_uint16_float_windows(image, labels):
    rgba = np.concatenate([image, np.full((128, 128, 1), 255, np.uint8)], -1)
    for img in (rgba, image.astype(np.uint16) * 257, image / 255.0):
        w = read_window(img, 10, 20, 32)
        assert w.dtype == np.uint8 and np.array_equal(w, image[10:42, 20:52])
        t = tiles_from_labels(img, labels, CLASSES, 32)
        assert np.array_equal(t.tiles, tiles_from_labels(image, labels, CLASSES, 32).tiles)
    with pytest.raises(HistodiffError, match="leaves the image"):
        read_window(image, 100, 0, 32)


@pytest.mark.parametrize("shape", [(128, 128), (3, 128, 128), (128, 128, 1), (2, 128, 128, 3)])
def test_non_rgb_images_rejected(shape, labels):
    bad = np.zeros(shape, np.uint8)
    msg = r"must be RGB \(H, W, 3\); got shape"
    with pytest.raises(HistodiffError, match=msg):
        check_rgb_image(bad)
    with pytest.raises(HistodiffError, match=msg):
        tiles_from_labels(bad, labels, CLASSES, 32)
    with pytest.raises(HistodiffError, match=msg):
        tiles_from_masks(bad, labels[None] > 0, ["TUM"], 32)
    with pytest.raises(HistodiffError, match=msg):
        tiles_from_points(bad, [[64, 64]], ["TUM"], 32)


def test_dask_image_gives_identical_tiles(image, labels):
    da = pytest.importorskip("dask.array")
    lazy = da.from_array(image, chunks=(50, 50, 3))
    a, b = tiles_from_labels(lazy, labels, CLASSES, 32), tiles_from_labels(image, labels, CLASSES, 32)
    assert np.array_equal(a.tiles, b.tiles) and a.origins == b.origins and a.labels.tolist() == b.labels.tolist()
    (pa, _), (pb, _) = (tiles_from_points(im, [[40, 50]], ["TUM"], 32) for im in (lazy, image))
    assert np.array_equal(pa.tiles, pb.tiles)


def test_class_counts_includes_zero_classes():
    t = ArrayTiles(np.zeros((3, 4, 4, 3), np.uint8), [0, 2, 0], ["ADI", "BACK", "TUM"])
    assert class_counts(t) == {"ADI": 2, "BACK": 0, "TUM": 1}
    assert class_counts(ArrayTiles(np.zeros((1, 4, 4, 3), np.uint8))) == {}


# -- layers in level-0 coordinates: shapes, scaled label images, points, pyramid levels ------------

def _pyramid():
    """Level 0 (256 px, 0.5 um/px) with a 128 px pink block at (64, 64), and its 2x downsample."""
    from napari_histodiff.core.data.annotations import ArraySource

    a = np.full((256, 256, 3), 245, np.uint8)
    a[64:192, 64:192] = (230, 80, 160)
    return ArraySource([a, a[::2, ::2]], mpp=0.5), a


def test_hole_free_parts_cover_the_polygon_exactly():
    import shapely
    from shapely.geometry import Polygon, box

    from napari_histodiff.core.data.annotations import hole_free_parts

    holes = [[(20, 20), (40, 20), (40, 40), (20, 40)], [(60, 60), (80, 60), (70, 90)]]
    p = Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], holes)
    parts = hole_free_parts(shapely.MultiPolygon([p, box(200, 0, 210, 10)]))
    assert all(not q.interiors for q in parts) and len(parts) >= 3
    assert sum(q.area for q in parts) == pytest.approx(p.area + 100)
    assert shapely.union_all(parts).symmetric_difference(shapely.MultiPolygon([p, box(200, 0, 210, 10)])).area < 1e-9


def test_shapes_paint_over_earlier_ones(image):
    from shapely.geometry import box

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.annotations import (
        ArraySource,
        shape_tiles,
        shapes_annotations,
    )

    src = ArraySource(image)
    t = run_to_end(shape_tiles(src, shapes_annotations([box(0, 0, 64, 64), box(0, 0, 32, 32)], ["TUM", "STR"]), 32))
    assert class_counts(t) == {"STR": 1, "TUM": 3} and t.origin(0) == "y=0,x=0" and t.label(0) == 0
    t = run_to_end(shape_tiles(src, shapes_annotations([box(0, 0, 32, 32), box(0, 0, 64, 64)], ["STR", "TUM"]), 32))
    assert class_counts(t) == {"STR": 0, "TUM": 4}  # painted over: kept as a class without tiles
    _check_pixels(t, image)
    # a triangle covering half of tile (0, 0): in at 50%, out at 51%
    from shapely.geometry import Polygon

    half = shapes_annotations([Polygon([(0, 0), (32, 0), (0, 32)])], ["TUM"])
    assert len(run_to_end(shape_tiles(src, half, 32, min_fraction=0.5))) == 1
    with pytest.raises(HistodiffError, match="no tile of 32 px is at least 51% annotated"):
        run_to_end(shape_tiles(src, half, 32, min_fraction=0.51))


def test_label_image_at_another_scale_gives_the_same_tiles(image, labels):
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.annotations import ArraySource, label_tiles

    full = tiles_from_labels(image, labels, CLASSES, 32)
    half = labels[::2, ::2]  # label pixel j covers image pixels 2j, 2j + 1: v = u / 2
    t = run_to_end(label_tiles(ArraySource(image), half, CLASSES, 32, to_labels=((0.5, 0.5), (0.0, 0.0))))
    assert t.origins == full.origins and t.labels.tolist() == full.labels.tolist()
    # a label image with 8 label px of margin before the image: offset 8 in label px, same tiles
    margin = np.zeros((80, 80), np.int32)
    margin[8:72, 8:72] = half
    t = run_to_end(label_tiles(ArraySource(image), margin, CLASSES, 32, stride=16, min_fraction=1.0,
                               to_labels=((0.5, 0.5), (8.0, 8.0))))
    same = tiles_from_labels(image, labels, CLASSES, 32, stride=16, min_fraction=1.0)
    assert t.origins == same.origins and t.labels.tolist() == same.labels.tolist()
    # without the offset the labels lie 16 image px up and left: fully covered windows move with them
    t = run_to_end(label_tiles(ArraySource(image), margin, CLASSES, 32, stride=16, min_fraction=1.0,
                               to_labels=((0.5, 0.5), (0.0, 0.0))))
    assert t.origins == [f"y={y + 16},x={x + 16}" for y, x in
                         (map(int, o.replace("y=", "").replace("x=", "").split(",")) for o in same.origins)
                         if y + 48 <= 128 and x + 48 <= 128]


def test_tiles_come_from_the_level_of_the_model_resolution():
    from shapely.geometry import box

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.annotations import shape_tiles, shapes_annotations

    src, a = _pyramid()
    ann = shapes_annotations([box(64, 64, 192, 192)], ["TUM"])
    t = run_to_end(shape_tiles(src, ann, 32, mpp=1.0, lazy=True))  # 2 level-0 px per tile px: level 1
    assert (t.level, t.read_size) == (1, 32) and t.xy.tolist() == [[64, 64], [128, 64], [64, 128], [128, 128]]
    assert np.array_equal(t[0], a[64:128:2, 64:128:2]) and all((t[i] == (230, 80, 160)).all() for i in range(4))
    in_memory = run_to_end(shape_tiles(src, ann, 32, mpp=1.0))  # arrays are read into memory at once
    assert np.array_equal(in_memory.tiles, np.stack(list(t))) and in_memory.origins[1] == "y=64,x=128"
    t = run_to_end(shape_tiles(src, ann, 32, mpp=0.75, min_fraction=1.0, lazy=True))  # 1.5 px per tile px
    assert (t.level, t.read_size) == (0, 48) and t[0].shape == (32, 32, 3)  # level 0, resized
    assert t.xy.tolist() == [[96, 96], [144, 96], [96, 144], [144, 144]]  # grid step 48 px, wholly inside
    t = run_to_end(shape_tiles(src, ann, 32, mpp=0.75, lazy=True))  # at 50%: all but the 4/9-covered corner
    assert len(t) == 8 and [48, 48] not in t.xy.tolist() and [48, 144] in t.xy.tolist()
    with pytest.raises(HistodiffError, match="a 32 px tile at 8 um/px covers 512 px of image"):
        run_to_end(shape_tiles(src, ann, 32, mpp=8.0))


def test_points_centre_tiles_at_the_model_resolution():
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.annotations import point_tiles

    src, a = _pyramid()
    # level-0 positions (continuous): pixel (row 100, col 130) and one too near the border
    t, skipped = run_to_end(point_tiles(src, [[100.5, 130.5], [10.5, 10.5]], ["TUM", "STR"], 32, mpp=1.0,
                                        lazy=True))
    assert skipped == 1 and t.xy.tolist() == [[98, 68]] and t.labels.tolist() == [1]  # centre pixel - 32
    assert t.class_names == ["STR", "TUM"]  # the classes of all points, as before
    assert np.array_equal(t[0], a[68:132:2, 98:162:2])
