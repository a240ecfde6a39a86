"""napari layers -> plain arrays for ``core.annotations`` (the core never sees napari objects)."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QComboBox

from ..core.base.errors import HistodiffError


class LayerCombo(QComboBox):
    """Names of the viewer's layers of some types, kept up to date."""

    def __init__(self, viewer, kinds: tuple, predicate=None):
        super().__init__()
        # long layer names do not widen the dock: the combo shrinks and elides
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(6)
        self.setMinimumWidth(80)
        self.viewer, self.kinds, self.predicate = viewer, kinds, predicate
        if viewer is not None:
            for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
                ev.connect(lambda *_: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        if self.viewer is not None:
            self.addItems([layer.name for layer in self.viewer.layers
                           if isinstance(layer, self.kinds) and (self.predicate is None or self.predicate(layer))])
        self.blockSignals(False)
        if current:
            self.setCurrentText(current)
        self.currentTextChanged.emit(self.currentText())

    def layer(self):
        name = self.currentText()
        if not name or self.viewer is None or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]


def image_array(layer):
    """The full-resolution RGB array of an Image layer (plain, dask-backed or multiscale)."""
    if layer is None:
        raise HistodiffError("no image layer: open an RGB H&E image first (File > Open, or File > Open Sample)")
    if not getattr(layer, "rgb", False):
        raise HistodiffError(f"layer {layer.name!r} is not an RGB image; open an RGB (H, W, 3) image")
    return layer.data[0] if layer.multiscale else layer.data


def labels_class_map(layer) -> dict[int, str]:
    """Label value -> class name from the layer's ``class`` feature, else ``class <value>``."""
    feats = getattr(layer, "features", None)
    if feats is not None and "class" in feats and len(feats):
        index = feats["index"] if "index" in feats else range(len(feats))
        return {int(v): str(c) for v, c in zip(index, feats["class"]) if int(v) != 0 and str(c)}
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return {int(v): f"class {int(v)}" for v in np.unique(np.asarray(data)) if v != 0}


def _names(layer, n: int) -> list[str]:
    feats = layer.features
    for column in ("class", "name"):
        if column in feats and len(feats) == n:
            return [str(x) if x == x else "" for x in feats[column]]  # NaN -> ""
    raise HistodiffError(f"layer {layer.name!r} has no `class` feature; give every item a class "
                         "(layer properties / features table)")


def extract(image_layer, ann_layer, tile_size: int, stride: int, min_fraction: float, class_map=None):
    """Labeled tiles from an image layer and a Labels, Shapes or Points layer; returns (tiles, skipped)."""
    import napari.layers as L

    from ..core.data import annotations as A
    image = image_array(image_layer)
    A.check_rgb_image(image)
    if ann_layer is None:
        raise HistodiffError("no annotation layer: add a Labels, Shapes or Points layer with classes")
    h, w = image.shape[:2]
    if isinstance(ann_layer, L.Labels):
        data = ann_layer.data[0] if ann_layer.multiscale else ann_layer.data
        cmap = class_map or labels_class_map(ann_layer)
        return A.tiles_from_labels(image, np.asarray(data), cmap, tile_size, stride, min_fraction), 0
    if isinstance(ann_layer, L.Shapes):
        if not len(ann_layer.data):
            raise HistodiffError(f"shapes layer {ann_layer.name!r} is empty; draw regions around each class")
        masks = np.asarray(ann_layer.to_masks(mask_shape=(h, w)), dtype=bool)
        return A.tiles_from_masks(image, masks, _names(ann_layer, len(masks)), tile_size, stride, min_fraction), 0
    if isinstance(ann_layer, L.Points):
        if not len(ann_layer.data):
            raise HistodiffError(f"points layer {ann_layer.name!r} is empty; click a point on each example")
        world = np.array([ann_layer.data_to_world(p) for p in ann_layer.data])
        pts = np.array([image_layer.world_to_data(p) for p in world])[:, -2:]
        return A.tiles_from_points(image, pts, _names(ann_layer, len(pts)), tile_size)
    raise HistodiffError(f"layer {ann_layer.name!r} is not a Labels, Shapes or Points layer")
