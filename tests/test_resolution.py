"""Resolution is visible (issue 30 item 3): the model card names the model's µm/px and tile size, and cutting
tiles from an image at another resolution says what happens."""

import pytest

pytest.importorskip("qtpy")


def test_the_model_card_shows_the_models_resolution_and_tile_size():
    from napari_histodiff.widgets.load import resolution_line

    assert resolution_line({"tile_size": 256, "microns_per_pixel": 0.499}) == \
        "tiles 256 px at <b>0.50 µm/px</b> (128 µm across)"
    assert "unknown µm/px" in resolution_line({"tile_size": 64, "microns_per_pixel": None})


def test_an_image_at_another_resolution_than_the_models_is_named():
    from napari_histodiff.widgets._layers import resolution_note

    assert resolution_note("slide.svs", 0.5, 0.51) is None  # the same, within 5%
    note = resolution_note("slide.svs", 0.25, 0.5)
    assert note.startswith("slide.svs is at 0.25 µm/px, the model expects 0.50 µm/px: tiles are cut at the "
                           "model's 0.50 µm/px") and "2x smaller" in note
    assert "coarser" in resolution_note("slide.svs", 1.0, 0.5)
    assert "does not say which resolution" in resolution_note("slide.svs", 0.5, None)
    assert resolution_note("photo", None, None) is None


def test_extraction_warns_before_cutting_tiles_at_the_models_resolution():
    import numpy as np
    from napari.layers import Image, Shapes

    from napari_histodiff.widgets._layers import extraction

    image = Image(np.full((256, 256, 3), 200, np.uint8), rgb=True, metadata={"mpp": 0.25})
    shapes = Shapes([np.array([[0, 0], [0, 255], [255, 255], [255, 0]], float)], features={"class": ["TUM"]})
    job = extraction(image, shapes, 32, 32, 0.5, mpp=0.5)
    first = next(job)
    assert first.stage == "warning" and "the model expects 0.50 µm/px" in first.message
