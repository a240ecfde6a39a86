"""Review follows the screen (issue 30 items 2, 3): the selected layer is the one reviewed and its keys act
on it; each tile shows its class in single, mixed and grid layers; the plugin's layers keep the slide's
units (pytest-qt, xvfb)."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_review_station import kept_on_disk, sample_folder  # noqa: E402
from test_widgets import dock, errors_shown, fresh_model  # noqa: E402,F401 (fresh_model: an autouse fixture)


def press(viewer, key):
    handler = viewer.window._qt_viewer._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def mixed_folder(folder):
    """One folder with tiles of two classes (an "all classes" sampling)."""
    from napari_histodiff.core.formats.records import RECORDS_FILE, read_records, write_records

    sample_folder(folder, "TUM", [0.9, 0.8])
    tum = read_records(folder)
    sample_folder(folder, "STR", [0.7], seed=1)
    write_records(folder / RECORDS_FILE, tum + read_records(folder))
    return folder


def test_the_selected_layer_is_reviewed_and_every_tile_shows_its_class(make_napari_viewer, tmp_path, monkeypatch):
    import warnings

    from napari.components.layerlist import LayerList

    shown = errors_shown(monkeypatch)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="slide", scale=(0.5, 0.5), units=("um", "um"))
    r = dock(viewer, "Review & export")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = r.open_folder(sample_folder(tmp_path / "old", "TUM", [0.9, 0.2]))
        new = r.open_folder(mixed_folder(tmp_path / "new"))
        grid = r.grid_view()
    # every layer the plugin added keeps the slide's micrometres: napari finds one set of units
    assert not [w for w in caught if "units" in str(w.message).lower()]
    units = LayerList._get_units([layer.extent for layer in viewer.layers])
    assert units is not None and [str(u) for u in units[-2:]] == ["micrometer", "micrometer"]
    assert {str(u) for layer in viewer.layers for u in layer.units[-2:]} == {"micrometer"}

    # the grid is selected: its tiles' layer is the one reviewed, and the panel says which
    assert viewer.layers.selection.active.name == grid.name and r.reviewed().name == new.name
    assert "review: new" in r.current.text() and r.layers.currentText() == "review: new"
    press(viewer, "a")  # the A key on the grid accepts the current tile of the new layer
    assert kept_on_disk(tmp_path / "new") == [True, None, None] and kept_on_disk(tmp_path / "old") == [None, None]

    # selecting the old layer in the layer list moves the review (and the keys) to it
    viewer.layers.selection.active = old
    assert r.reviewed().name == old.name and r.layers.currentText() == old.name
    viewer.dims.set_current_step(0, 0)
    press(viewer, "r")
    assert kept_on_disk(tmp_path / "old") == [False, None]
    # choosing a layer in the panel selects it in the layer list
    r.layers.setCurrentText(new.name)
    assert viewer.layers.selection.active.name == new.name
    # the slide selected: nothing is reviewed, the panel says so, keys and buttons write nothing
    viewer.layers.selection.active = viewer.layers["slide"]
    assert r.reviewed() is None and "'slide' holds no synthetic tiles" in r.current.text()
    r.accept_all()
    assert kept_on_disk(tmp_path / "new") == [True, None, None]
    assert not shown, shown

    # each tile shows its class and decision, in a single-class layer, a mixed layer and the grid
    labels = {name: viewer.layers[f"classes: {name}"] for name in (old.name, new.name, grid.name)}
    assert list(labels[old.name].features["label"]) == ["TUM ✗", "TUM"]
    assert list(labels[new.name].features["label"]) == ["TUM ✓", "TUM", "STR"]
    assert list(labels[grid.name].features["label"]) == ["TUM ✓", "TUM", "STR"]
    assert np.array_equal(labels[new.name].data[:, 0], [0, 1, 2])  # one label on each tile's own plane
    assert np.array_equal(labels[grid.name].data, [[2, 2], [2, 20], [20, 2]])  # each cell's corner (16 px tiles)
    assert np.allclose(labels[grid.name].scale, grid.scale) and np.allclose(labels[grid.name].translate,
                                                                               grid.translate)
    assert labels[new.name].text.values.tolist() == ["TUM ✓", "TUM", "STR"]
    # removing a layer of tiles removes its labels
    viewer.layers.remove(old)
    assert f"classes: {old.name}" not in viewer.layers
