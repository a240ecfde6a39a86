"""Classes in the plugin (issue 15, item 5): the Annotate panel's class table (name, colour) of a Shapes,
Points or Labels layer, and the names reaching the extracted tiles (pytest-qt, xvfb)."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_widgets import dock, fresh_model  # noqa: E402,F401 (fresh_model: an autouse fixture)


def square(r0, c0, r1, c1):
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


def gradient(viewer):
    yy, xx = np.mgrid[:128, :128]
    return viewer.add_image(np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8), rgb=True)


def table(w):
    """The table as shown: [(name, colour, third column)]."""
    return [(w.table.item(r, 0).text(), w.table.item(r, 1).background().color().name(), w.table.item(r, 2).text())
            for r in range(w.table.rowCount())]


def shapes_layer(viewer):
    """Three squares: TUM (top left), STR (bottom right), TUM (top right)."""
    return viewer.add_shapes([square(0, 0, 63, 63), square(64, 64, 127, 127), square(0, 64, 63, 127)],
                             shape_type="polygon", features={"class": ["TUM", "STR", "TUM"]})


def test_the_table_shows_the_classes_of_the_active_shapes_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    w = dock(viewer, "Annotate")
    assert w.table.rowCount() == 0 and not w.add_button.isEnabled()
    shapes = shapes_layer(viewer)
    assert w.layer.name == shapes.name  # follows the active layer
    rows = table(w)
    assert [(n, count) for n, _, count in rows] == [("TUM", "2"), ("STR", "1")]
    assert len({c for _, c, _ in rows}) == 2  # one colour per class
    assert shapes.metadata["class_colors"] == {n: c for n, c, _ in rows}  # kept with the layer
    points = viewer.add_points(np.array([[10, 10], [20, 20]]), features={"class": ["LYM", "LYM"]})
    assert w.layer.name == points.name and [(n, k) for n, _, k in table(w)] == [("LYM", "2")]
    viewer.layers.selection.active = shapes
    assert w.layer.name == shapes.name and table(w) == rows  # the same classes and colours again


def test_assign_selected_changes_the_features_colours_and_the_extracted_tiles(make_napari_viewer):
    from napari_histodiff.widgets._layers import extract

    viewer = make_napari_viewer()
    image = gradient(viewer)
    w = dock(viewer, "Annotate")
    shapes = shapes_layer(viewer)
    tiles, _ = extract(image, shapes, 32, 32, 0.5)
    assert dict(zip(tiles.class_names, np.bincount(tiles.labels))) == {"STR": 4, "TUM": 8}

    w.add("NEC", "#123456")
    assert table(w)[-1] == ("NEC", "#123456", "0")
    shapes.selected_data = {2}  # the top-right square
    w.select("NEC")
    w.assign_button.click()
    assert shapes.features["class"].tolist() == ["TUM", "STR", "NEC"]
    assert np.allclose(shapes.edge_color[2], [0x12 / 255, 0x34 / 255, 0x56 / 255, 1])
    assert np.allclose(shapes.face_color[2][:3], [0x12 / 255, 0x34 / 255, 0x56 / 255])
    assert not np.allclose(shapes.edge_color[0][:3], shapes.edge_color[2][:3])  # the others keep theirs
    assert [(n, k) for n, _, k in table(w)] == [("TUM", "1"), ("STR", "1"), ("NEC", "1")]
    tiles, _ = extract(image, shapes, 32, 32, 0.5)
    counts = dict(zip(tiles.class_names, np.bincount(tiles.labels)))
    assert counts == {"NEC": 4, "STR": 4, "TUM": 4}
    # the top-right tiles are NEC now (tile x >= 64, y < 64)
    nec = tiles.class_names.index("NEC")
    starts = {(int(t[0, 0, 0]), int(t[0, 0, 1])) for t, lab in zip(tiles.tiles, tiles.labels) if lab == nec}
    assert starts == {(0, 64), (0, 96), (32, 64), (32, 96)}  # the gradient image: pixel = (row, col)
    # shapes drawn next get the class too
    shapes.selected_data = set()
    shapes.add_rectangles(np.array([[100, 0], [127, 30]]))
    assert shapes.features["class"].tolist()[-1] == "NEC"


def test_assign_selected_points(make_napari_viewer):
    from napari_histodiff.widgets._layers import extract

    viewer = make_napari_viewer()
    image = gradient(viewer)
    w = dock(viewer, "Annotate")
    points = viewer.add_points(np.array([[40, 40], [80, 80]]), features={"class": ["TUM", "TUM"]})
    w.add("STR", "#00ff00")
    points.selected_data = {1}
    assert w.assign("STR") == [1]
    assert points.features["class"].tolist() == ["TUM", "STR"]
    assert np.allclose(points.face_color[1], [0, 1, 0, 1]) and np.allclose(points.border_color[1], [0, 1, 0, 1])
    tiles, _ = extract(image, points, 32, 32, 0.5)
    assert [tiles.class_names[k] for k in tiles.labels] == ["TUM", "STR"]


def test_rename_propagates_to_every_item_and_the_tiles(make_napari_viewer):
    from napari_histodiff.widgets._layers import extract

    viewer = make_napari_viewer()
    image = gradient(viewer)
    w = dock(viewer, "Annotate")
    shapes = shapes_layer(viewer)
    colour = shapes.metadata["class_colors"]["TUM"]
    w.rename("TUM", "Tumour")
    assert shapes.features["class"].tolist() == ["Tumour", "STR", "Tumour"]
    assert shapes.metadata["class_colors"] == {"Tumour": colour, "STR": shapes.metadata["class_colors"]["STR"]}
    assert [(n, c, k) for n, c, k in table(w)][0] == ("Tumour", colour, "2")
    tiles, _ = extract(image, shapes, 32, 32, 0.5)
    assert tiles.class_names == ["STR", "Tumour"]
    # editing the name in the table renames too
    item = w.table.item(1, 0)
    assert item.text() == "STR"
    item.setText("Stroma")
    from qtpy.QtWidgets import QApplication

    for _ in range(3):
        QApplication.processEvents()
    assert shapes.features["class"].tolist() == ["Tumour", "Stroma", "Tumour"]
    # renaming onto an existing class merges the two
    w.rename("Stroma", "Tumour")
    assert set(shapes.features["class"]) == {"Tumour"} and [n for n, _, _ in table(w)] == ["Tumour"]


def test_recolour_and_remove_unused(make_napari_viewer):
    from napari_histodiff.core.base.errors import HistodiffError

    viewer = make_napari_viewer()
    w = dock(viewer, "Annotate")
    shapes = shapes_layer(viewer)
    w.recolor("STR", "#ff8800")
    assert np.allclose(shapes.edge_color[1][:3], [1, 0x88 / 255, 0])
    assert dict((n, c) for n, c, _ in table(w))["STR"] == "#ff8800"
    with pytest.raises(HistodiffError, match="still have class 'STR'"):
        w.remove("STR")
    w.add("EMPTY")
    w.remove("EMPTY")
    assert [n for n, _, _ in table(w)] == ["TUM", "STR"] and "EMPTY" not in shapes.metadata["class_colors"]


def test_labels_value_names_reach_the_extracted_class_names(make_napari_viewer):
    from napari_histodiff.widgets._layers import extract

    viewer = make_napari_viewer()
    image = gradient(viewer)
    w = dock(viewer, "Annotate")
    data = np.zeros((128, 128), np.uint8)
    data[:64, :64] = 1
    data[96:, :] = 2
    labels = viewer.add_labels(data)
    tiles, _ = extract(image, labels, 32, 32, 0.5)
    assert tiles.class_names == ["class 1", "class 2"]  # no names yet
    assert [(n, v) for n, _, v in table(w)] == [("class 1", "1"), ("class 2", "2")]
    assert not w.assign_button.isEnabled()
    w.rename(1, "TUM")
    w.rename(2, "STR")
    assert [(n, v) for n, _, v in table(w)] == [("TUM", "1"), ("STR", "2")]
    tiles, _ = extract(image, labels, 32, 32, 0.5)
    assert tiles.class_names == ["STR", "TUM"]
    assert dict(zip(tiles.class_names, np.bincount(tiles.labels))) == {"STR": 4, "TUM": 4}
    # a new class is a new value to paint with; colours are the layer's
    assert w.add("NEC") == 3 and labels.selected_label == 3
    w.recolor(3, "#0000ff")
    assert np.allclose(labels.get_color(3), [0, 0, 1, 1])
    assert table(w)[2] == ("NEC", "#0000ff", "3")
    before = labels.get_color(1)
    labels.data[0:32, 96:128] = 3
    labels.refresh()
    tiles, _ = extract(image, labels, 32, 32, 0.5)
    assert dict(zip(tiles.class_names, np.bincount(tiles.labels))) == {"NEC": 1, "STR": 4, "TUM": 4}
    assert np.allclose(labels.get_color(1), before)  # the other values keep their colours
    w.select(1)
    assert labels.selected_label == 1  # choosing a row picks the value to paint
    # a value painted without a name joins the table and the tiles as "class <value>"
    labels.data[32:64, 96:128] = 5
    labels.refresh()
    w.refresh()
    assert table(w)[-1][0::2] == ("class 5", "5")
    tiles, _ = extract(image, labels, 32, 32, 0.5)
    assert dict(zip(tiles.class_names, np.bincount(tiles.labels))) == {"NEC": 1, "STR": 4, "TUM": 4, "class 5": 1}


def test_geojson_classes_and_colours_show_in_the_table(make_napari_viewer, tmp_path):
    from shapely.geometry import box

    from napari_histodiff._reader import get_reader
    from napari_histodiff.core.data.geojson import Annotation, write_geojson

    path = tmp_path / "case.geojson"
    write_geojson(path, [Annotation(box(0, 0, 50, 50), "Tumor", "annotation", (200, 0, 0), "t1"),
                         Annotation(box(60, 60, 90, 90), "Stroma: Inflamed", "annotation", (0, 150, 0), None),
                         Annotation(box(0, 60, 40, 90), "Tumor", "annotation", (200, 0, 0), None)])
    viewer = make_napari_viewer()
    w = dock(viewer, "Annotate")
    for data, kw, kind in get_reader(str(path))(str(path)):
        getattr(viewer, f"add_{kind}")(data, **kw)
    assert sorted(table(w)) == [("Stroma: Inflamed", "#009600", "1"), ("Tumor", "#c80000", "2")]
    # a recoloured class is what the GeoJSON writer gives QuPath back
    from napari_histodiff.core.data.geojson import read_geojson

    w.recolor("Tumor", "#0000ff")
    out = tmp_path / "saved.geojson"
    viewer.layers["case.geojson"].save(str(out), plugin="napari-histodiff")
    assert read_geojson(out).colors() == {"Tumor": (0, 0, 255), "Stroma: Inflamed": (0, 150, 0)}


def test_every_control_has_a_tooltip_and_the_panel_is_in_the_dock(make_napari_viewer):
    from test_tooltips import controls, describe, owner

    from napari_histodiff.widgets.classes import ClassesWidget

    viewer = make_napari_viewer()
    _, d = viewer.window.add_plugin_dock_widget("napari-histodiff", "HistoDiffusion")
    assert isinstance(d.classes, ClassesWidget)
    shapes_layer(viewer)
    assert d.classes.table.rowCount() == 2
    offenders = [describe(owner(c)) for c in controls(d.classes) if not owner(c).toolTip().strip()]
    assert not offenders


def test_recolouring_reaches_new_shapes_fills_stay_see_through_and_names_are_on_the_canvas():
    """Issue 30 item 4 (no viewer needed: the class functions work on the layer)."""
    from napari.layers import Shapes

    from napari_histodiff.widgets.classes import FACE_ALPHA, draw_with, recolor_class, rename_class, \
        see_through, show_class_names

    shapes = Shapes([square(0, 0, 63, 63), square(64, 64, 127, 127)], shape_type="polygon",
                    features={"class": ["TUM", "Dermis: Inflamed"]})
    assert show_class_names(shapes)
    see_through(shapes)  # the Annotate panel does both when it shows a layer
    assert list(shapes.text.values) == ["TUM", "Dermis: Inflamed"]  # the name as the pathologist wrote it
    draw_with(shapes, "Dermis: Inflamed")
    recolor_class(shapes, "Dermis: Inflamed", "#ff8800")
    shapes.add_rectangles(square(0, 64, 63, 127)[[0, 2]])  # drawn after the recolouring
    orange = [1, 0x88 / 255, 0]
    for k in (1, 2):  # the existing shape and the new one
        assert np.allclose(shapes.face_color[k], [*orange, FACE_ALPHA], atol=1e-2), shapes.face_color[k]
        assert np.allclose(shapes.edge_color[k], [*orange, 1.0], atol=1e-2)
    assert np.allclose(shapes.face_color[0][3], FACE_ALPHA, atol=1e-2)  # every fill see-through
    assert list(shapes.text.values) == ["TUM", "Dermis: Inflamed", "Dermis: Inflamed"]
    rename_class(shapes, "TUM", "Tumour")
    assert list(shapes.text.values)[0] == "Tumour"
    custom = Shapes([square(0, 0, 9, 9)], features={"class": ["A"], "note": ["mine"]}, text="{note}")
    assert not show_class_names(custom) and list(custom.text.values) == ["mine"]  # the user's own text stays
