"""QuPath GeoJSON: reading QuPath's export variants, class coverage of boxes, writing, clear errors."""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.data.geojson import Annotation, read_geojson, write_geojson

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "cmu_small_region.geojson"


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(geometry, cls=None, object_type="annotation", **cls_extra):
    props = {"objectType": object_type}
    if cls is not None:
        props["classification"] = {("names" if isinstance(cls, list) else "name"): cls, **cls_extra}
    return {"type": "Feature", "id": "x", "geometry": geometry, "properties": props}


def poly(*rings):
    return {"type": "Polygon", "coordinates": list(rings)}


def dump(tmp_path, data, name="a.geojson"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


# Class A: square 0..100. Class B: square 200..400 with a hole 250..350.
A = feature(poly(square(0, 0, 100, 100)), "A", color=[255, 0, 0])
B = feature(poly(square(200, 200, 400, 400), square(250, 250, 350, 350)), "B", colorRGB=-16711936)  # ARGB green


def test_coverage_of_squares_and_a_hole(tmp_path):
    s = read_geojson(dump(tmp_path, {"type": "FeatureCollection", "features": [A, B]}))
    assert s.class_names == ["A", "B"] and s.skipped == {} and s.source == "a.geojson"
    assert s.colors() == {"A": (255, 0, 0), "B": (0, 255, 0)}
    assert s.bounds() == (0.0, 0.0, 400.0, 400.0)
    boxes = np.array([
        [10, 10, 30, 30],      # inside A
        [50, 0, 150, 100],     # half over A
        [260, 260, 300, 300],  # inside B's hole
        [225, 300, 275, 350],  # half over B's ring, half over the hole
        [500, 500, 600, 600],  # outside
        [150, 150, 250, 250],  # quarter over B
    ])
    np.testing.assert_allclose(s.coverage(boxes), [[1, 0], [0.5, 0], [0, 0], [0, 0.5], [0, 0], [0, 0.25]])
    labels, frac = s.label_boxes(boxes, min_fraction=0.5)
    assert labels.tolist() == [0, 0, -1, 1, -1, -1] and labels.dtype == np.int64
    np.testing.assert_allclose(frac, [1, 0.5, 0, 0.5, 0, 0.25])
    assert s.coverage(np.zeros((0, 4))).shape == (0, 2)


def test_overlapping_classes_largest_fraction_wins_ties_to_first(tmp_path):
    feats = [feature(poly(square(0, 0, 100, 100)), "Z"),  # listed first in the file, last in class_names
             feature(poly(square(0, 0, 60, 100)), "M"),
             feature(poly(square(50, 0, 100, 100)), "A")]
    s = read_geojson(dump(tmp_path, feats))  # a bare list of features
    assert s.class_names == ["A", "M", "Z"]
    boxes = [[0, 0, 100, 100], [0, 0, 50, 100], [40, 0, 60, 100], [60, 0, 110, 100]]
    np.testing.assert_allclose(s.coverage(boxes), [[0.5, 0.6, 1], [0, 1, 1], [0.5, 1, 1], [0.8, 0, 0.8]])
    labels, frac = s.label_boxes(boxes)
    assert labels.tolist() == [2, 1, 1, 0]  # Z covers most; M ties Z; M ties Z; A ties Z
    np.testing.assert_allclose(frac, [1, 1, 1, 0.8])
    # two annotations of one class count once where they overlap
    s2 = read_geojson(dump(tmp_path, [feature(poly(square(0, 0, 60, 100)), "A"),
                                      feature(poly(square(40, 0, 100, 100)), "A")]))
    np.testing.assert_allclose(s2.coverage([[0, 0, 100, 100], [0, 0, 200, 100]]), [[1], [0.5]])


def test_multipolygon_collection_derived_class_and_single_feature(tmp_path):
    mp = {"type": "MultiPolygon", "coordinates": [[square(0, 0, 10, 10)], [square(20, 0, 30, 10)]]}
    s = read_geojson(dump(tmp_path, feature(mp, ["Dermis", "Inflamed"], color=[1, 2, 3])))
    (a,) = s.annotations
    assert a.class_name == "Dermis: Inflamed" and a.geometry.geom_type == "MultiPolygon" and a.geometry.area == 200
    np.testing.assert_allclose(s.coverage([[0, 0, 30, 10]]), [[2 / 3]])
    gc = {"type": "GeometryCollection", "geometries": [poly(square(0, 0, 10, 10)), {"type": "Point", "coordinates": [50, 50]}]}
    s = read_geojson(dump(tmp_path, [feature(gc, "A")]))
    assert s.annotations[0].geometry.area == 100


def test_detections_points_and_unclassified_are_skipped_and_counted(tmp_path):
    feats = [A, feature(poly(square(0, 0, 5, 5)), "A", "detection"), feature(poly(square(0, 0, 5, 5)), "A", "cell"),
             feature({"type": "Point", "coordinates": [1, 2]}, "A"), feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, "A"),
             feature(poly(square(0, 0, 5, 5))), feature(None, "A"), feature({"type": "Circle", "radius": 3}, "A")]
    p = dump(tmp_path, {"type": "FeatureCollection", "features": feats})
    s = read_geojson(p)
    assert len(s.annotations) == 1
    assert s.skipped == {"object type detection": 1, "object type cell": 1, "unsupported geometry (Point)": 1,
                         "unsupported geometry (LineString)": 1, "unclassified": 1, "empty or invalid geometry": 1,
                         "unsupported geometry (Circle)": 1}
    s = read_geojson(p, object_types=("annotation", "detection"))
    assert sorted(a.object_type for a in s.annotations) == ["annotation", "detection"]
    assert s.skipped["object type cell"] == 1 and "object type detection" not in s.skipped


def test_self_intersecting_polygon_is_repaired(tmp_path):
    bowtie = poly([[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]])  # two triangles of area 25
    s = read_geojson(dump(tmp_path, [feature(bowtie, "A"), feature(poly([[0, 0], [5, 5], [0, 0]]), "A")]))
    (a,) = s.annotations
    assert a.geometry.is_valid and a.geometry.area == 50
    assert s.skipped == {"empty or invalid geometry": 1}


def test_qupath_02_style_features(tmp_path):
    old = [{"type": "Feature", "id": "PathAnnotationObject", "geometry": poly(square(0, 0, 10, 10)),
            "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}, "isLocked": False}},
           {"type": "Feature", "id": "PathDetectionObject", "geometry": poly(square(0, 0, 1, 1)),
            "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}}}]
    s = read_geojson(dump(tmp_path, old))
    assert s.class_names == ["Tumor"] and s.colors() == {"Tumor": (200, 0, 0)}
    assert s.skipped == {"object type detection": 1}


def test_round_trip(tmp_path):
    s = read_geojson(dump(tmp_path, [A, B, feature(poly(square(0, 0, 5, 5)), ["Dermis", "Inflamed"], color=[1, 2, 3])]))
    s.annotations[0].name = "first"
    out = tmp_path / "out.geojson"
    write_geojson(out, s.annotations)
    data = json.loads(out.read_text())
    assert data["type"] == "FeatureCollection" and len({f["id"] for f in data["features"]}) == 3
    assert data["features"][2]["properties"]["classification"] == {"name": "Dermis: Inflamed",
                                                                  "names": ["Dermis", "Inflamed"], "color": [1, 2, 3]}
    back = read_geojson(out)
    assert [a.class_name for a in back.annotations] == ["A", "B", "Dermis: Inflamed"]
    assert [a.color for a in back.annotations] == [(255, 0, 0), (0, 255, 0), (1, 2, 3)]
    assert [a.name for a in back.annotations] == ["first", None, None]
    assert all(a.geometry.equals(b.geometry) for a, b in zip(s.annotations, back.annotations))
    assert back.annotations[1].geometry.interiors[0].coords[0] == (250.0, 250.0)  # the hole survives


def test_written_annotations_import_back(tmp_path):
    import shapely

    ring = shapely.box(0, 0, 40, 40).difference(shapely.box(10, 10, 20, 20))
    anns = [Annotation(ring, "Tumor", "annotation", (200, 0, 0), "r"),
            Annotation(shapely.MultiPolygon([shapely.box(50, 0, 60, 10), shapely.box(70, 0, 80, 10)]), "Stroma", "annotation", None)]
    write_geojson(tmp_path / "w.geojson", anns)
    s = read_geojson(tmp_path / "w.geojson")
    assert s.class_names == ["Stroma", "Tumor"] and s.colors() == {"Tumor": (200, 0, 0)}
    np.testing.assert_allclose(s.coverage([[0, 0, 10, 10], [10, 10, 20, 20], [50, 0, 80, 10]]), [[0, 1], [0, 0], [2 / 3, 0]])
    assert not list(tmp_path.glob(".w.geojson*"))  # no partial file left


@pytest.mark.parametrize("content, words", [
    ("not json {", ["is not a JSON file", "Export objects as GeoJSON"]),
    (json.dumps({"hello": 1}), ["not GeoJSON", "Export objects as GeoJSON"]),
    (json.dumps([feature(poly(square(0, 0, 5, 5)))] * 3 + [feature(poly(square(0, 0, 5, 5)), "A", "detection")]),
     ["3 unclassified, 1 detection", "classify the annotations in QuPath", "use the detection objects too (detections)"]),
    (json.dumps([feature({"type": "Point", "coordinates": [1, 2]}, "A")]), ["unsupported geometry (Point)", "not points"]),
    (json.dumps({"type": "FeatureCollection", "features": []}), ["holds no objects"]),
])
def test_errors_name_the_file_and_the_fix(tmp_path, content, words):
    p = tmp_path / "bad.geojson"
    p.write_text(content)
    with pytest.raises(HistodiffError) as e:
        read_geojson(p)
    msg = str(e.value)
    assert "bad.geojson" in msg and "\n" not in msg
    for w in words:
        assert w in msg
    with pytest.raises(HistodiffError, match="no GeoJSON file"):
        read_geojson(tmp_path / "missing.geojson")


def test_100k_boxes_over_a_slide_with_two_small_polygons(tmp_path):
    s = read_geojson(dump(tmp_path, [feature(poly(square(1000, 1000, 1300, 1300)), "A"),
                                     feature(poly(square(49920, 19968, 50176, 20480)), "B")]))
    xs, ys = np.meshgrid(np.arange(400) * 256, np.arange(250) * 256)  # 102400 x 64000 px slide
    boxes = np.stack([xs.ravel(), ys.ravel(), xs.ravel() + 256, ys.ravel() + 256], axis=1)
    t = time.perf_counter()
    labels, frac = s.label_boxes(boxes)
    print(f"\n100k boxes: {time.perf_counter() - t:.3f} s")
    assert len(boxes) == 100_000
    assert sorted(np.flatnonzero(labels == 1).tolist()) == [78 * 400 + 195, 79 * 400 + 195]  # B fills two tiles
    np.testing.assert_allclose(frac[labels == 1], 1)
    cov = s.coverage(boxes)
    assert cov[:, 0].sum() * 256 * 256 == pytest.approx(300 * 300) and (labels == 0).sum() == 1  # A: 3 partial tiles + 1
    assert (cov.sum(axis=1) > 0).sum() == 9 + 2


def test_real_qupath_export():
    if not REAL.is_file():
        pytest.skip(f"{REAL} is absent")
    s = read_geojson(REAL)
    assert s.class_names == ["Dermis", "Dermis: Inflamed", "Epidermis"]  # a derived class is its own class
    assert s.skipped == {"unclassified": 1, "object type detection": 1}
    assert s.colors() == {"Epidermis": (150, 50, 200), "Dermis": (250, 130, 160), "Dermis: Inflamed": (120, 90, 60)}
    epi = next(a for a in s.annotations if a.class_name == "Epidermis")
    assert epi.geometry.geom_type == "MultiPolygon" and len(epi.geometry.geoms) == 2 and epi.name == "epithelium"
    np.testing.assert_allclose(s.coverage([[1560, 2040, 1680, 2160], [1440, 1880, 1560, 2000], [1000, 2240, 1200, 2400]]),
                               [[0, 0, 0], [1, 0, 0], [0, 1, 0]])  # hole of Dermis; Dermis; Dermis: Inflamed
    assert len(read_geojson(REAL, object_types=("annotation", "detection")).annotations) == 4


# -- issue 27.7 / 27.10 / 30.4: repairs named, NaN named, every object loaded or named and kept ---------

def test_bow_tie_is_repaired_and_named_per_annotation(tmp_path):
    bowtie = poly([[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]])
    fine = feature(poly(square(20, 0, 30, 10)), "B")
    bad = feature(bowtie, "A")
    bad["properties"]["name"] = "bow"
    s = read_geojson(dump(tmp_path, [bad, fine, feature(bowtie, "B")]))
    assert [a.geometry.area for a in s.annotations] == [50, 100, 50] and all(a.geometry.is_valid for a in s.annotations)
    assert len(s.notes) == 2  # one per repaired annotation, none for the valid one
    assert "a.geojson" in s.notes[0] and "annotation 'bow' (A)" in s.notes[0] and "crosses itself" in s.notes[0]
    assert "annotation 3 (B)" in s.notes[1] and "make_valid" in s.notes[1]
    assert read_geojson(dump(tmp_path, [A, B], "ok.geojson")).notes == []


def test_shapes_drawn_as_a_bow_tie_are_named_when_tiled():
    from shapely.geometry import Polygon

    from napari_histodiff.core.base.events import Progress, run_to_end
    from napari_histodiff.core.data.annotations import ArraySource, shape_tiles, shapes_annotations

    anns = shapes_annotations([Polygon([(0, 0), (128, 128), (128, 0), (0, 128)]), Polygon(square(128, 0, 256, 128))],
                              ["TUM", "STR"])
    assert len(anns.notes) == 1 and anns.notes[0].startswith("shape 0 (TUM) crosses itself")
    events = []
    run_to_end(shape_tiles(ArraySource(np.full((256, 256, 3), 200, np.uint8)), anns, 32), events.append)
    assert [e.message for e in events if isinstance(e, Progress) and e.stage == "warning"] == anns.notes


NAN = float("nan")


@pytest.mark.parametrize("geometry", [
    poly([[0, 0], [10, 0], [NAN, 10], [0, 10], [0, 0]]),  # reached GEOS: "encountered NaN/Inf"
    poly([[NAN, 0], [10, 0], [10, 10], [0, 10], [NAN, 0]]),  # the first and closing point
    poly(square(0, 0, 100, 100), [[10, 10], [20, 10], [20, float("inf")], [10, 10]]),  # in a hole, infinite
    {"type": "MultiPolygon", "coordinates": [[square(0, 0, 10, 10)], [[[20, 0], [30, 0], [30, NAN], [20, 0]]]]},
])
def test_a_nan_coordinate_names_the_file_and_the_annotation(tmp_path, geometry):
    bad = feature(geometry, "Tumor")
    bad["properties"]["name"] = "region 7"
    p = dump(tmp_path, [A, bad])
    assert "NaN" in p.read_text() or "Infinity" in p.read_text()  # what json writes, and QuPath may
    with pytest.raises(HistodiffError) as e:
        read_geojson(p)
    msg = str(e.value)
    assert "a.geojson" in msg and "annotation 'region 7' (Tumor)" in msg and "not a number" in msg
    assert "GEOS" not in msg and "\n" not in msg
    # a NaN in an object that is not used (a detection) is kept as it was, not an error
    det = feature(geometry, "Tumor", "detection")
    assert len(read_geojson(dump(tmp_path, [A, det], "b.geojson")).left_out) == 1


def test_every_qupath_object_is_loaded_or_named_and_written_back(tmp_path):
    unclassified = feature(poly(square(0, 0, 5, 5)))
    unclassified["properties"]["name"] = "todo"
    det = feature(poly(square(0, 0, 1, 1)), "Tumor", "detection")
    point = feature({"type": "Point", "coordinates": [1, 2]}, "A")
    cells = [feature(poly(square(k, 0, k + 1, 1)), "Tumor", "cell") for k in range(7)]
    feats = [A, unclassified, det, point, B] + cells
    s = read_geojson(dump(tmp_path, feats))
    assert len(s.annotations) + len(s.left_out) == len(feats)
    assert [x.feature for x in s.left_out] == [unclassified, det, point] + cells  # as they were
    msg = s.left_out_message()
    assert msg.startswith("a.geojson: 10 of 12 QuPath objects are not used")
    for words in ("1 unclassified (annotation 'todo')", "1 detection object (detection 3 (Tumor))",
                  "1 unsupported geometry (Point) (annotation 4 (A))", "7 cell objects (cell 6 (Tumor), ",
                  "and 2 more"):
        assert words in msg, words
    assert read_geojson(dump(tmp_path, [A, B], "all.geojson")).left_out_message() is None
    write_geojson(tmp_path / "back.geojson", s.annotations, kept=[x.feature for x in s.left_out])
    back = json.loads((tmp_path / "back.geojson").read_text())["features"]
    assert len(back) == len(feats) and back[2:] == [unclassified, det, point] + cells
    again = read_geojson(tmp_path / "back.geojson", object_types=("annotation", "detection", "cell"))
    assert len(again.annotations) == 2 + 1 + 7 and again.skipped == {"unclassified": 1,
                                                                      "unsupported geometry (Point)": 1}


def test_class_counts_are_qupath_objects_not_polygon_pieces():
    from napari_histodiff.core.data.geojson import count_objects

    # a MultiPolygon (object 0, two pieces), a holed polygon cut in two (object 1), two drawn shapes (-1)
    classes = ["Epidermis", "Epidermis", "Dermis", "Dermis", "Dermis", "Epidermis", float("nan")]
    objects = [0, 0, 1, 1, -1, -1, -1]
    assert count_objects(classes, objects) == {"Epidermis": 2, "Dermis": 2, "": 1}
    assert count_objects(["A", "A"], [None, float("nan")]) == {"A": 2}  # no object number: one each


def test_real_qupath_export_names_what_it_leaves_out():
    if not REAL.is_file():
        pytest.skip(f"{REAL} is absent")
    s = read_geojson(REAL)
    msg = s.left_out_message()
    assert "1 unclassified" in msg and "1 detection object" in msg and len(s.left_out) == 2
