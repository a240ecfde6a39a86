"""Slides and QuPath GeoJSON in napari: the readers, the GeoJSON writer, and labelled tiles from layers
(shapes, labels, points) on slides read at the model's resolution, in bounded memory."""

import json
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")

from napari.components import ViewerModel
from shapely.geometry import MultiPolygon, Polygon, box
from slide_data import GLASS, write_slide

from napari_histodiff._reader import get_reader, read_annotations, read_slide
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.data.annotations import (
    SlideSource,
    shape_tiles,
    shapes_annotations,
)
from napari_histodiff.core.data.geojson import Annotation, read_geojson, write_geojson
from napari_histodiff.widgets._layers import extract

PLUGIN = "napari-histodiff"
SLIDES = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
PINK, PURPLE = (230, 80, 160), (40, 60, 200)
# the small slide: 2048 x 1536 px at 0.5 um/px, levels 1, 1/2, 1/4
PINK_BOX, PURPLE_BOX = (512, 512, 1024, 1024), (1536, 1024, 2048, 1536)  # x0, y0, x1, y1 (level 0)


@pytest.fixture(scope="module", autouse=True)
def plugins():
    """The plugin's writer for layer.save, whichever tests run (napari finds plugins on first use only)."""
    from npe2 import PluginManager

    PluginManager.instance().discover()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    return write_slide(folder / "case.tif", 2048, 1536, [(*PINK_BOX, PINK), (*PURPLE_BOX, PURPLE)], mpp=0.5)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """30720 x 30720 px at 0.25 um/px (2.8 GB of pixels at level 0), written tile by tile: glass with a
    512 px block in the top-left and one in the bottom-right corner."""
    n = 30720
    return write_slide(tmp_path_factory.mktemp("big") / "big.tif", n, n,
                       [(0, 0, 512, 512, PINK), (n - 512, n - 512, n, n, PURPLE)], mpp=0.25)


def open_in(viewer, path):
    """Add the layers the plugin's reader makes of ``path`` (as File > Open does)."""
    reader = get_reader(str(path))
    assert reader is not None, path
    return [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in reader(str(path))]


def rect(x0, y0, x1, y1, scale=1.0, translate=(0.0, 0.0)):
    """A napari rectangle (row, col vertices) covering level-0 pixels [x0, x1) x [y0, y1) on a layer of
    ``scale`` level-0 px per data unit shifted by ``translate`` level-0 px (pixel centres on integers)."""
    ty, tx = translate
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) - 0.5
    return (corners - [ty, tx]) / scale


def colours(tiles):
    return [tuple(int(c) for c in tiles[i][tiles.tile_size // 2, tiles.tile_size // 2]) for i in range(len(tiles))]


# -- the reader ------------------------------------------------------------------------------------

def test_manifest_claims_slides_and_geojson_but_not_every_file(tmp_path):
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()

    def claims(name):
        return PLUGIN in {r.plugin_name for r in pm.iter_compatible_readers([str(tmp_path / name)])}

    for name in ("a.svs", "a.NDPI", "a.mrxs", "a.scn", "a.bif", "a.ome.tiff", "a.ome.tif", "a.tif", "a.tiff",
                 "a.dcm", "a.geojson"):
        assert claims(name), name
    for name in ("a.png", "a.jpg", "a.csv", "a.npy", "a.json", "a.zarr"):
        assert not claims(name), name
    writers = [w for w in pm.iter_compatible_writers(["shapes"]) if w.plugin_name == PLUGIN]
    assert [w.filename_extensions for w in writers] == [[".geojson"]]


def test_slide_opens_as_lazy_multiscale_layer_in_micrometres(small):
    import dask.array as da

    (levels, kw, kind), = get_reader(str(small))(str(small))
    assert kind == "image" and kw["multiscale"] and kw["rgb"]
    assert [lv.shape for lv in levels] == [(1536, 2048, 3), (768, 1024, 3), (384, 512, 3)]
    assert all(isinstance(lv, da.Array) for lv in levels)
    assert kw["scale"] == (0.5, 0.5) and kw["units"] == ("um", "um")
    meta = kw["metadata"]
    assert meta["slide_path"] == str(small) and meta["mpp"] == 0.5 and meta["level_downsamples"] == [1, 2, 4]
    assert meta["level_dimensions"] == [[2048, 1536], [1024, 768], [512, 384]]
    assert tuple(levels[1][300, 300].compute()) == PINK  # level-0 (600, 600)
    assert tuple(levels[2][300, 450].compute()) == PURPLE  # level-0 (1200, 1800)
    assert tuple(levels[0][0, 0].compute()) == (GLASS,) * 3
    viewer = ViewerModel()
    layer, = open_in(viewer, small)
    assert layer.multiscale and np.allclose(layer.scale, 0.5)
    assert np.allclose(layer.downsample_factors, [[1, 1], [2, 2], [4, 4]])  # napari derives each level's scale
    assert np.allclose(layer.data_to_world((1000, 2000)), (500, 1000))  # level-0 px -> um
    assert str(layer.units[0]) == "micrometer"


def test_tiff_claim_is_left_to_napari_for_stacks_and_grey_images(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 64, 64), np.uint16))
    tifffile.imwrite(tmp_path / "grey.tif", np.zeros((64, 64), np.uint8))
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[:, 48:] = PINK
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert get_reader(str(tmp_path / "stack.tif")) is None and get_reader(str(tmp_path / "grey.tif")) is None
    assert get_reader(str(tmp_path / "a.png")) is None
    (data, kw, _), = read_slide(str(tmp_path / "rgb.tif"))
    assert not kw["multiscale"] and data.shape == (64, 96, 3) and "scale" not in kw  # no resolution: 1 px
    assert np.array_equal(np.asarray(data), rgb)


def test_large_slide_opens_without_reading_its_pixels(big):
    tracemalloc.start()
    (levels, _, _), = read_slide(str(big))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [lv.shape[:2] for lv in levels] == [(30720, 30720), (15360, 15360), (7680, 7680)]
    assert peak < 50e6 and tuple(levels[2][7679, 7679].compute()) == PURPLE


# -- GeoJSON: reader and writer -----------------------------------------------------------------------

def holed():
    return Polygon([(100, 100), (500, 100), (500, 500), (100, 500)], [[(200, 200), (300, 200), (300, 300), (200, 300)]])


def qupath_file(path):
    write_geojson(path, [
        Annotation(holed(), "Tumor", "annotation", (200, 0, 0), "t1"),
        Annotation(MultiPolygon([box(600, 100, 700, 200), box(800, 300, 900, 400)]), "Stroma: Inflamed",
                   "annotation", (0, 150, 0), None),
        Annotation(Polygon([(1000, 1000), (1200, 1000), (1100, 1200)]), "Tumor", "annotation", (200, 0, 0), "t2"),
    ])
    return path


def test_geojson_opens_as_shapes_on_the_slide_of_its_name(tmp_path):
    import shapely

    write_slide(tmp_path / "case.tif", 2048, 1536, [], mpp=0.5)
    (data, kw, kind), = get_reader(str(qupath_file(tmp_path / "case.geojson")))(str(tmp_path / "case.geojson"))
    assert kind == "shapes" and kw["shape_type"] == "polygon"
    assert kw["scale"] == (0.5, 0.5) and kw["translate"] == (-0.25, -0.25)  # the slide's um/px, half a pixel
    assert kw["metadata"]["slide_path"] == str(tmp_path / "case.tif") and kw["metadata"]["mpp"] == 0.5
    feats = kw["features"]
    # the holed polygon is cut in two hole-free pieces, the MultiPolygon gives one shape per part
    assert list(feats["object"]) == [0, 0, 1, 1, 2]
    assert list(feats["class"]) == ["Tumor", "Tumor", "Stroma: Inflamed", "Stroma: Inflamed", "Tumor"]
    assert list(feats["name"]) == ["t1", "t1", "", "", "t2"]
    assert np.allclose(kw["edge_color"][:, :3] * 255, [[200, 0, 0]] * 2 + [[0, 150, 0]] * 2 + [[200, 0, 0]])
    assert np.allclose(kw["face_color"][:, 3], 0.3) and np.allclose(kw["edge_color"][:, 3], 1)
    pieces = [Polygon(d[:, ::-1]) for d in data]  # data are the file's (y, x)
    assert all(not p.interiors for p in pieces)
    assert shapely.union_all(pieces[:2]).symmetric_difference(holed()).area < 1e-9
    assert pieces[4].equals(Polygon([(1000, 1000), (1200, 1000), (1100, 1200)]))
    # without a slide of that name beside it: 1 px per unit
    other = qupath_file(tmp_path / "other.geojson")
    (_, kw, _), = read_annotations(str(other))
    assert kw["scale"] == (1.0, 1.0) and kw["translate"] == (-0.5, -0.5) and kw["metadata"]["slide_path"] is None


def test_geojson_round_trips_through_the_reader_and_writer(tmp_path):
    write_slide(tmp_path / "case.tif", 2048, 1536, [], mpp=0.5)
    original = read_geojson(qupath_file(tmp_path / "case.geojson"))
    viewer = ViewerModel()
    layer, = open_in(viewer, tmp_path / "case.geojson")
    layer.add_rectangles(np.array([[1400, 1400], [1500, 1600]]))  # drawn later (data = file px): own object
    assert layer.features["object"].tolist()[-1] == -1 and layer.features["class"].tolist()[-1] == "Tumor"
    out = tmp_path / "saved.geojson"
    assert layer.save(str(out), plugin=PLUGIN) == [str(out)]
    back = read_geojson(out)
    assert [a.class_name for a in back.annotations] == [a.class_name for a in original.annotations] + ["Tumor"]
    assert [a.name for a in back.annotations] == ["t1", None, "t2", None]
    assert back.annotations[3].geometry.equals(box(1400, 1400, 1600, 1500))
    assert back.colors() == {"Tumor": (200, 0, 0), "Stroma: Inflamed": (0, 150, 0)}
    for a, b in zip(original.annotations, back.annotations):
        assert a.geometry.geom_type == b.geometry.geom_type
        assert a.geometry.symmetric_difference(b.geometry).area < 1e-6, (a.geometry, b.geometry)
    assert len(back.annotations[0].geometry.interiors) == 1  # the hole is back
    raw = json.loads(out.read_text())["features"][1]["properties"]["classification"]
    assert raw["names"] == ["Stroma", "Inflamed"]


def test_shapes_drawn_on_the_slide_are_written_in_its_pixels(tmp_path, small):
    viewer = ViewerModel()
    image, = open_in(viewer, small)
    # what napari's "new shapes" button makes with the slide selected: the slide's scale and translate
    shapes = viewer.add_shapes([rect(20, 10, 40, 30)], shape_type="rectangle", scale=image.scale,
                               translate=image.translate, features={"class": ["X"]}, edge_color="red")
    shapes.add_ellipses(np.array([[100, 200], [50, 80]]))  # centre (row 100, col 200), radii 50 x 80
    shapes.features.loc[1, "class"] = ""
    path = tmp_path / "drawn.geojson"
    shapes.save(str(path), plugin=PLUGIN)
    features = json.loads(path.read_text())["features"]
    assert features[0]["properties"]["classification"] == {"name": "X", "color": [255, 0, 0]}
    assert Polygon(features[0]["geometry"]["coordinates"][0]).equals(box(20, 10, 40, 30))
    assert "classification" not in features[1]["properties"]  # unclassified
    ellipse = Polygon(features[1]["geometry"]["coordinates"][0])
    assert np.allclose(ellipse.bounds, (200.5 - 80, 100.5 - 50, 200.5 + 80, 100.5 + 50))
    assert ellipse.area == pytest.approx(np.pi * 50 * 80, rel=0.01)


# -- labelled tiles from layers -----------------------------------------------------------------------

def test_two_corner_rectangles_on_a_30k_slide_in_bounded_memory(big):
    viewer = ViewerModel()
    image, = open_in(viewer, big)
    n = 30720
    shapes = viewer.add_shapes([rect(0, 0, 512, 512), rect(n - 512, n - 512, n, n)], shape_type="rectangle",
                               scale=image.scale, features={"class": ["TUM", "STR"]})
    tracemalloc.start()
    start = time.perf_counter()
    tiles, skipped = extract(image, shapes, 128, 128, 0.5, mpp=0.5)  # the model: 0.5 um/px -> level 1
    pixels = [tiles[i] for i in range(len(tiles))]
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"30k two-rectangle extraction: {seconds:.2f} s, {peak / 1e6:.1f} MB traced peak")
    assert skipped == 0 and tiles.level == 1 and tiles.read_size == 128 and tiles.class_names == ["STR", "TUM"]
    assert tiles.xy.tolist() == [[0, 0], [256, 0], [0, 256], [256, 256], [n - 512, n - 512], [n - 256, n - 512],
                                 [n - 512, n - 256], [n - 256, n - 256]]
    assert tiles.labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert all(p.shape == (128, 128, 3) for p in pixels)
    assert all((p == PINK).all() for p in pixels[:4]) and all((p == PURPLE).all() for p in pixels[4:])
    assert peak < 300e6, f"{peak / 1e6:.0f} MB traced"
    assert seconds < 30


class LazyLabels:
    """A 30720^2 label image that exists only where it is read (like a dask or zarr array): two corner
    blocks; records the largest window read."""

    shape, dtype, ndim = (30720, 30720), np.dtype(np.uint8), 2

    def __init__(self):
        self.largest = 0

    def __getitem__(self, key):
        rows, cols = key
        r, c = range(*rows.indices(self.shape[0])), range(*cols.indices(self.shape[1]))
        self.largest = max(self.largest, len(r) * len(c))
        out = np.zeros((len(r), len(c)), np.uint8)
        for (y0, y1, x0, x1), v in (((0, 512, 0, 512), 1), ((30208, 30720, 30208, 30720), 2)):
            ya, yb, xa, xb = max(y0, r.start), min(y1, r.stop), max(x0, c.start), min(x1, c.stop)
            if ya < yb and xa < xb:
                out[ya - r.start : yb - r.start, xa - c.start : xb - c.start] = v
        return out


def test_a_30k_label_image_is_read_window_by_window(big):
    viewer = ViewerModel()
    image, = open_in(viewer, big)
    lazy = LazyLabels()
    labels = viewer.add_labels(lazy, scale=image.scale, visible=False,  # hidden: napari draws none of it
                               features={"index": [0, 1, 2], "class": ["", "TUM", "STR"]})
    tracemalloc.start()
    tiles, _ = extract(image, labels, 128, 128, 1.0, mpp=0.5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    n = 30720
    assert tiles.xy.tolist() == [[0, 0], [256, 0], [0, 256], [256, 256], [n - 512, n - 512], [n - 256, n - 512],
                                 [n - 512, n - 256], [n - 256, n - 256]]
    assert tiles.labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert lazy.largest <= 2048 * 2048 and peak < 300e6


def test_shapes_with_scale_and_translate_give_the_tiles_of_level0_coordinates(small):
    viewer = ViewerModel()
    image, = open_in(viewer, small)
    # reference: the same regions as polygons in level-0 px, straight into the core
    reference = run_to_end(shape_tiles(SlideSource(small), shapes_annotations(
        [box(*PINK_BOX), box(*PURPLE_BOX)], ["TUM", "STR"]), 64, min_fraction=1.0, mpp=1.0))
    pink = {(x, y) for x in range(512, 1024, 128) for y in range(512, 1024, 128)}
    purple = {(x, y) for x in range(1536, 2048, 128) for y in range(1024, 1536, 128)}
    assert {tuple(v) for v in reference.xy.tolist()} == pink | purple and reference.level == 1
    for scale, shift in ((1, (0, 0)), (2, (0, 0)), (4, (100, -36)), (0.5, (-8, 12))):
        # the layer's data: level-0 px / scale, shifted by shift level-0 px (its translate, in um)
        shapes = viewer.add_shapes([rect(*PINK_BOX, scale, shift), rect(*PURPLE_BOX, scale, shift)],
                                   shape_type="polygon", scale=(0.5 * scale, 0.5 * scale),
                                   translate=(0.5 * shift[0], 0.5 * shift[1]), features={"class": ["TUM", "STR"]})
        tiles, _ = extract(image, shapes, 64, 64, 1.0, mpp=1.0)
        assert tiles.xy.tolist() == reference.xy.tolist() and tiles.labels.tolist() == reference.labels.tolist()
        assert tiles.class_names == ["STR", "TUM"]
        assert colours(tiles) == [PINK if k == 1 else PURPLE for k in tiles.labels]
    # shifted by one tile, the purple rectangle lies half outside the slide: its inner tiles only
    shapes = viewer.add_shapes([rect(*PURPLE_BOX)], shape_type="rectangle", scale=image.scale,
                               translate=(0, 0.5 * 256), features={"class": ["STR"]})
    tiles, _ = extract(image, shapes, 64, 64, 1.0, mpp=1.0)
    assert {tuple(v) for v in tiles.xy.tolist()} == {(x + 256, y) for x, y in purple if x + 256 + 128 <= 2048}


def test_labels_layer_at_lower_resolution(small):
    viewer = ViewerModel()
    image, = open_in(viewer, small)
    lab = np.zeros((384, 512), np.uint8)  # 1/4 of level 0: label pixel j covers level-0 pixels 4j..4j+3
    lab[128:256, 128:256] = 1
    lab[256:384, 384:512] = 2
    # napari: label pixel j is centred on image pixel 4j + 1.5, i.e. world (4j + 1.5) * 0.5 um
    labels = viewer.add_labels(lab, scale=(2, 2), translate=(0.75, 0.75),
                               features={"index": [0, 1, 2], "class": ["", "TUM", "STR"]})
    tiles, _ = extract(image, labels, 64, 64, 1.0, mpp=1.0)
    pink = {(x, y) for x in range(512, 1024, 128) for y in range(512, 1024, 128)}
    purple = {(x, y) for x in range(1536, 2048, 128) for y in range(1024, 1536, 128)}
    got = {tuple(v): k for v, k in zip(tiles.xy.tolist(), tiles.labels.tolist())}
    assert got == {**{p: 1 for p in pink}, **{p: 0 for p in purple}}
    assert colours(tiles) == [PINK if k == 1 else PURPLE for k in tiles.labels]
    # a dask label image gives the same tiles; no class feature: every value is its own class
    import dask.array as da

    labels2 = viewer.add_labels(da.from_array(lab, chunks=100), scale=(2, 2), translate=(0.75, 0.75))
    tiles2, _ = extract(image, labels2, 64, 64, 1.0, mpp=1.0)
    assert tiles2.class_names == ["class 1", "class 2"] and tiles2.xy.tolist() == tiles.xy.tolist()
    assert tiles2.labels.tolist() == [1 - k for k in tiles.labels.tolist()]


def test_points_layer_centres_tiles_at_the_model_resolution(small):
    viewer = ViewerModel()
    image, = open_in(viewer, small)
    points = viewer.add_points(np.array([[700, 700], [1200, 1700], [10, 10]]) * 0.5, scale=(1, 1),
                               features={"class": ["TUM", "STR", "TUM"]})  # data in um: world = data
    tiles, skipped = extract(image, points, 64, 64, 0.5, mpp=1.0)  # a tile: 128 level-0 px
    assert skipped == 1 and tiles.class_names == ["STR", "TUM"] and tiles.labels.tolist() == [1, 0]
    assert tiles.xy.tolist() == [[636, 636], [1636, 1136]]  # centre pixel - 64
    assert colours(tiles) == [PINK, PURPLE]


def test_errors_name_the_problem(small):
    viewer = ViewerModel()
    image, = open_in(viewer, small)
    far = viewer.add_shapes([rect(5000, 5000, 5600, 5600)], scale=image.scale, features={"class": ["TUM"]})
    with pytest.raises(HistodiffError, match="lie outside case.tif"):
        extract(image, far, 64, 64, 0.5, mpp=1.0)
    lines = viewer.add_shapes([np.array([[0, 0], [100, 100]])], shape_type="line", features={"class": ["TUM"]})
    with pytest.raises(HistodiffError, match="only lines and paths"):
        extract(image, lines, 64, 64, 0.5)
    tiny = viewer.add_shapes([rect(600, 600, 640, 640)], scale=image.scale, features={"class": ["TUM"]})
    with pytest.raises(HistodiffError, match="no tile of 64 px is at least 50% annotated"):
        extract(image, tiny, 64, 64, 0.5, mpp=1.0)
    with pytest.raises(HistodiffError, match="covers 40960 px of case.tif"):
        extract(image, tiny, 64, 64, 0.5, mpp=320.0)


def test_images_without_a_resolution_follow_the_clis_rule(small, tmp_path):
    """Issue 27.7: napari tiled an image without um/px at full resolution where the CLI refused it: now
    both refuse with one message (core's tile_factor), and both tile it when no resolution is asked for."""
    from napari_histodiff.core.data.slide_tiles import SlideTiles, tile_factor
    from napari_histodiff.widgets._layers import extraction

    viewer = ViewerModel()
    image = viewer.add_image(np.full((256, 256, 3), 200, np.uint8), rgb=True, name="plain")
    shapes = viewer.add_shapes([rect(0, 0, 128, 128)], features={"class": ["TUM"]})
    with pytest.raises(HistodiffError) as napari_error:
        run_to_end(extraction(image, shapes, 64, 64, 0.5, mpp=0.5))
    assert napari_error.value.raw == _raw_of(lambda: tile_factor("plain", None, 0.5))
    tifffile.imwrite(tmp_path / "plain.tif", np.full((256, 256, 3), 200, np.uint8), photometric="rgb")
    with pytest.raises(HistodiffError) as cli_error:
        SlideTiles(tmp_path / "plain.tif", 64, mpp=0.5)
    assert cli_error.value.raw.replace("plain.tif", "plain") == napari_error.value.raw
    tiles, _ = run_to_end(extraction(image, shapes, 64, 64, 0.5))  # no resolution asked for: as stored
    assert len(tiles) == 4 and tiles.tiles.shape == (4, 64, 64, 3)
    image.scale, image.units = (0.25, 0.25), ("um", "um")  # the user gives the layer its resolution
    tiles, _ = run_to_end(extraction(image, shapes, 64, 64, 0.5, mpp=0.5))
    # 256 px at 0.25 um/px (the shape now covers all of it) is 128 px at 0.5 um/px: four 64 px tiles
    assert tiles.tiles.shape[1:] == (64, 64, 3) and len(tiles) == 4


def _raw_of(attempt) -> str:
    try:
        attempt()
    except HistodiffError as e:
        return e.raw
    raise AssertionError("no error")


def test_qupath_objects_the_layer_does_not_show_are_named_once_and_saved_back(tmp_path, monkeypatch):
    """Issue 30.4: the unclassified annotation and the detection were dropped without a message and lost on save."""
    import napari_histodiff._reader as reader

    shown = []
    monkeypatch.setattr(reader, "_notify", shown.append)
    qupath_file(tmp_path / "case.geojson")
    data = json.loads((tmp_path / "case.geojson").read_text())
    extra = [{"type": "Feature", "id": "u", "properties": {"objectType": "annotation", "name": "later"},
              "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [50, 50], [0, 50], [0, 0]]]}},
             {"type": "Feature", "id": "d", "properties": {"objectType": "detection",
                                                           "classification": {"name": "Tumor"}},
              "geometry": {"type": "Polygon", "coordinates": [[[5, 5], [9, 5], [9, 9], [5, 5]]]}},
             {"type": "Feature", "id": "b", "properties": {"objectType": "annotation", "name": "bow",
                                                           "classification": {"name": "Tumor"}},
              "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [90, 90], [90, 0], [0, 90], [0, 0]]]}}]
    data["features"] += extra
    (tmp_path / "case.geojson").write_text(json.dumps(data))
    viewer = ViewerModel()
    layer, = open_in(viewer, tmp_path / "case.geojson")
    assert len(shown) == 1  # one message for the file
    msg = shown[0]
    assert "case.geojson: 2 of 6 QuPath objects are not used" in msg and "1 unclassified (annotation 'later')" in msg
    assert "1 detection object (detection 5 (Tumor))" in msg and "kept when the layer is saved" in msg
    assert "annotation 'bow' (Tumor) crosses itself" in msg and layer.metadata["message"] == msg
    out = tmp_path / "saved.geojson"
    assert layer.save(str(out), plugin=PLUGIN) == [str(out)]
    back = json.loads(out.read_text())["features"]
    assert len(back) == 6 and back[-2:] == extra[:2]  # every object of the file, the left-out ones as they were
    again = read_geojson(out)
    assert [x.feature for x in again.left_out] == extra[:2] and len(again.annotations) == 4
    assert read_annotations(str(tmp_path / "case.geojson"))[0][1]["metadata"]["qupath_kept"] == extra[:2]


# -- the Fine-tune widget extracts on a worker ---------------------------------------------------------

@pytest.fixture()
def fake_model():
    from napari_histodiff.widgets._state import MODEL

    MODEL.model, MODEL.training, MODEL.labeled = SimpleNamespace(tile_size=64, meta={"microns_per_pixel": 1.0}), \
        False, None
    yield MODEL
    MODEL.model, MODEL.training, MODEL.labeled = None, False, None


def test_finetune_widget_extracts_slide_tiles_off_the_gui_thread(make_napari_viewer, qtbot, small, fake_model):
    pytest.importorskip("pytestqt")
    viewer = make_napari_viewer()
    image, = open_in(viewer, small)
    shapes = viewer.add_shapes([rect(*PINK_BOX), rect(*PURPLE_BOX)], scale=image.scale,
                               features={"class": ["TUM", "STR"]})
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    w.image.setCurrentText(image.name)
    w.annotations.setCurrentText(shapes.name)
    w.extract()
    assert w.tiles is None and not w.extract_button.isEnabled()  # running on the worker
    qtbot.waitUntil(lambda: w.tiles is not None, timeout=30_000)
    qtbot.waitUntil(lambda: not w.extracting.busy, timeout=10_000)
    assert fake_model.labeled is w.tiles and w.tiles.level == 1 and len(w.tiles) == 32
    assert w.counts.text().startswith("Tiles per class: STR: 16, TUM: 16")
    assert w.extract_button.isEnabled() and not w.preview.pixmap().isNull()
    # an error in the worker (the shapes lie outside the slide) is shown; the widget stays usable
    far = viewer.add_shapes([rect(5000, 5000, 5600, 5600)], scale=image.scale, features={"class": ["TUM"]})
    w.annotations.setCurrentText(far.name)
    w.extract()
    assert w.extracting.busy
    qtbot.waitUntil(lambda: not w.extracting.busy, timeout=10_000)
    assert w.tiles is None and w.extract_button.isEnabled() and fake_model.labeled is not None


# -- the real Aperio slide and its QuPath annotations ------------------------------------------------

def test_real_aperio_slide_and_its_geojson(tmp_path):
    svs, geojson = SLIDES / "cmu_small_region.svs", SLIDES / "cmu_small_region.geojson"
    if not (svs.is_file() and geojson.is_file()):
        pytest.skip(f"real slide data not available in {SLIDES}")
    from napari_histodiff.core.data.slide_tiles import SlideTiles

    viewer = ViewerModel()
    image, = open_in(viewer, svs)
    assert image.data.shape == (2967, 2220, 3) and not image.multiscale  # one level
    mpp = image.metadata["mpp"]
    assert mpp == pytest.approx(0.499, abs=1e-3) and np.allclose(image.scale, mpp)
    shapes, = open_in(viewer, geojson)
    assert np.allclose(shapes.scale, mpp) and shapes.metadata["slide_path"] == str(svs)
    assert sorted(set(shapes.features["class"])) == ["Dermis", "Dermis: Inflamed", "Epidermis"]
    assert list(shapes.features["object"]).count(1) == 2  # the Dermis polygon with a hole: two pieces
    # the tiles are those the CLI cuts from the slide with the same annotations
    tiles, _ = extract(image, shapes, 64, 64, 0.5, mpp=1.0)
    cli = SlideTiles(svs, 64, mpp=1.0, annotations=read_geojson(geojson))
    assert sorted(map(tuple, tiles.xy.tolist())) == sorted(map(tuple, cli.xy.tolist()))
    by_xy = {tuple(v): cli.class_names[k] for v, k in zip(cli.xy.tolist(), cli.labels.tolist())}
    assert all(by_xy[tuple(v)] == tiles.class_names[k] for v, k in zip(tiles.xy.tolist(), tiles.labels.tolist()))
    assert np.array_equal(tiles[0], cli[[tuple(v) for v in cli.xy.tolist()].index(tuple(tiles.xy[0]))])
    # and the annotations survive a round trip through the writer
    out = tmp_path / "again.geojson"
    shapes.save(str(out), plugin=PLUGIN)
    original, back = read_geojson(geojson), read_geojson(out)
    assert [(a.class_name, a.color, a.name) for a in back.annotations] == \
        [(a.class_name, a.color, a.name) for a in original.annotations]
    for a, b in zip(original.annotations, back.annotations):
        assert a.geometry.symmetric_difference(b.geometry).area < 1e-6
