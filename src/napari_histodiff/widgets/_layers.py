"""napari layers -> plain inputs for ``core.data.annotations`` (the core never sees napari objects).

Shapes and points go through both layers' transforms (data -> world -> the image layer's level-0
pixels) into shapely polygons and positions; a Labels layer goes as its own (possibly lazy) array
with its scale and offset relative to the image; tiles are read from the slide file of a layer
opened by this plugin's reader (at the model's resolution), else from the layer's arrays."""

from __future__ import annotations

from pathlib import Path

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
        self.refreshing = False  # True while the list is rebuilt (a change then is no user choice)
        if viewer is not None:
            for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
                ev.connect(lambda *_: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        current = self.currentText()
        self.refreshing = True
        try:
            self.blockSignals(True)
            self.clear()
            if self.viewer is not None:
                self.addItems([layer.name for layer in self.viewer.layers if isinstance(layer, self.kinds)
                               and (self.predicate is None or self.predicate(layer))])
            self.blockSignals(False)
            if current:
                self.setCurrentText(current)
            self.currentTextChanged.emit(self.currentText())
        finally:
            self.refreshing = False

    def layer(self):
        name = self.currentText()
        if not name or self.viewer is None or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]


def tissue_units(viewer, ndim: int = 2) -> tuple:
    """Units for a new layer of ``ndim`` axes beside the tissue: the tissue's (the first Image layer that
    is not synthetic tiles, e.g. µm of a slide) on the last two axes, ``pixel`` on the others (a tile
    stack's index). Layers the plugin adds carry them, so napari never finds inconsistent units."""
    from napari.layers import Image

    units = ("pixel", "pixel")
    if viewer is not None:
        images = [layer for layer in viewer.layers if isinstance(layer, Image) and "histodiff" not in layer.metadata
                  and "histodiff_of" not in layer.metadata]
        if images:
            units = tuple(str(u) for u in images[0].units[-2:])
    return ("pixel",) * (ndim - 2) + units


def image_array(layer):
    """The full-resolution RGB array of an Image layer (plain, dask-backed or multiscale)."""
    _check_image_layer(layer)
    return layer.data[0] if layer.multiscale else layer.data


def _check_image_layer(layer) -> None:
    if layer is None:
        raise HistodiffError("no image layer: open an RGB H&E image first (File > Open, or File > Open Sample)")
    if not getattr(layer, "rgb", False):
        raise HistodiffError(f"layer {layer.name!r} is not an RGB image; open an RGB (H, W, 3) image")


def image_source(layer):
    """Where tiles of an Image layer are read from: the slide file of a layer opened by this plugin's
    reader (``metadata['slide_path']``: read at the level matching the model's resolution, on demand),
    else the layer's own arrays (all levels of a multiscale layer)."""
    from ..core.data.annotations import ArraySource, SlideSource

    _check_image_layer(layer)
    meta = layer.metadata or {}
    path = meta.get("slide_path")
    if path and Path(path).is_file():
        return SlideSource(path, meta.get("mpp") if meta.get("mpp_source") == "given" else None)
    levels = list(layer.data) if layer.multiscale else [layer.data]
    return ArraySource(levels, meta.get("mpp") or layer_mpp(layer), name=layer.name)


def layer_mpp(layer) -> float | None:
    """Microns per pixel of an image layer whose scale is in micrometres (napari's ``units``), else None:
    set the layer's scale and units (e.g. ``layer.scale = (0.5, 0.5); layer.units = ("um", "um")``) to give
    the resolution of an image that does not record its own."""
    try:
        unit = layer.units[-1]
        if str(unit) != "micrometer":
            return None
        mpp = float(layer.scale[-1])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return mpp if mpp > 0 else None


def labels_class_map(layer) -> dict[int, str]:
    """Label value -> class name from the layer's ``class`` feature, else ``class <value>``."""
    found = _feature_class_map(layer)
    if found is not None:
        return found
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return _value_names(data)


def _feature_class_map(layer) -> dict[int, str] | None:
    feats = getattr(layer, "features", None)
    if feats is not None and "class" in feats and len(feats):
        index = feats["index"] if "index" in feats else range(len(feats))
        return {int(v): str(c) for v, c in zip(index, feats["class"]) if int(v) != 0 and str(c)}
    return None


def _value_names(data) -> dict[int, str]:
    return {int(v): f"class {int(v)}" for v in _unique(data) if v != 0}


def _unique(data) -> np.ndarray:
    """Unique values of a (possibly huge or dask) array, block by block."""
    if hasattr(data, "compute") and hasattr(data, "blocks"):
        import dask.array as da

        return np.asarray(da.unique(data).compute())
    h = data.shape[0]
    step = max(1, (1 << 24) // max(1, int(np.prod(data.shape[1:]))))
    return np.unique(np.concatenate([np.unique(np.asarray(data[i : i + step])) for i in range(0, h, step)]))


CLASS_COLUMNS = ("class", "name")  # the feature column of a shape's / point's class: the first present


def class_column(layer) -> str | None:
    """The feature column that holds the class of each shape or point (``class``, else ``name``), None
    when the layer has neither (or its table does not have one row per item)."""
    feats = layer.features
    for column in CLASS_COLUMNS:
        if column in feats and len(feats) == len(layer.data):
            return column
    return None


def _names(layer, n: int) -> list[str]:
    feats = layer.features
    for column in CLASS_COLUMNS:
        if column in feats and len(feats) == n:
            return [str(x) if x == x else "" for x in feats[column]]  # NaN -> ""
    raise HistodiffError(f"layer {layer.name!r} has no `class` feature; give every item a class "
                         "(layer properties / features table)")


# -- coordinates: a layer's data -> world -> the image's level-0 pixels ----------------------------

def _matrix(layer) -> np.ndarray:
    """3x3 affine of the layer's last two axes (row, col): data -> world."""
    if layer.ndim != 2:
        raise HistodiffError(f"layer {layer.name!r} has {layer.ndim} dimensions; use 2-D layers (one image plane) "
                             "for the image and its annotations.")
    from napari.utils.transforms import Affine

    # napari: world = affine * (rotate * shear * scale * data + translate)
    inner = Affine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear,
                   ndim=layer.ndim).affine_matrix
    return (np.asarray(layer.affine.affine_matrix, dtype=float) @ inner)[-3:, -3:]


def to_image(layer, image_layer) -> np.ndarray:
    """3x3 affine: the layer's data coordinates (row, col) -> the image layer's level-0 data coordinates."""
    return np.linalg.inv(_matrix(image_layer)) @ _matrix(layer)


def to_level0(coords, m: np.ndarray) -> np.ndarray:
    """(N, 2) data (row, col) -> level-0 (row, col), continuous (napari pixel centres are on integers)."""
    coords = np.asarray(coords, dtype=float)[:, -2:]
    return coords @ m[:2, :2].T + m[:2, 2] + 0.5


AREA_SHAPES = ("polygon", "rectangle", "ellipse")


def shape_polygons(layer, m: np.ndarray | None = None) -> tuple[list, list[int]]:
    """The area shapes of a Shapes layer as shapely polygons in (x, y) = (col, row) coordinates after
    ``m`` (default: none, data + 0.5), and the index of each; paths and lines have no area: left out."""
    from shapely.geometry import Polygon

    from ..core.data.annotations import ellipse_ring

    m = np.eye(3) if m is None else m
    polys, index = [], []
    for k, (verts, kind) in enumerate(zip(layer.data, layer.shape_type)):
        if kind not in AREA_SHAPES:
            continue
        verts = np.asarray(verts, dtype=float)[:, -2:]
        ring = ellipse_ring(verts) if kind == "ellipse" else verts
        rc = to_level0(ring, m)
        if len(rc) >= 3:
            polys.append(Polygon(rc[:, ::-1]))
            index.append(k)
    return polys, index


# -- extraction -------------------------------------------------------------------------------------

def resolution_note(name: str, image_mpp: float | None, model_mpp: float | None) -> str | None:
    """What the user should know when the image and the model differ in resolution (None when they agree):
    tiles are then cut at the model's µm/px, resampled from the image (or at the image's own when the
    model does not say)."""
    if not model_mpp:
        return (f"the model does not say which resolution it expects: tiles are cut from {name} at its own "
                f"resolution ({float(image_mpp):.2f} µm/px)" if image_mpp else None)
    if not image_mpp or abs(float(image_mpp) / float(model_mpp) - 1) < 0.05:
        return None
    ratio = float(model_mpp) / float(image_mpp)
    how = f"{ratio:.2g}x smaller" if ratio > 1 else f"{1 / ratio:.2g}x larger (blurred: the image is coarser)"
    return (f"{name} is at {float(image_mpp):.2f} µm/px, the model expects {float(model_mpp):.2f} µm/px: tiles "
            f"are cut at the model's {float(model_mpp):.2f} µm/px (the image resampled {how}), as the model "
            "needs them")


def _noted(note: str | None, job):
    from ..core.base.events import warning

    if note:
        yield warning(note)
    return (yield from job)


def extraction(image_layer, ann_layer, tile_size: int, stride: int, min_fraction: float, class_map=None,
               mpp: float | None = None):
    """The extraction job for a worker thread: a generator (yields progress) returning (tiles, skipped).

    The layers are read here (in the GUI thread): shapes and points become level-0 coordinates of the
    image (through both layers' scale, translate, rotate and affine), a Labels layer is passed as its
    (lazy) array with its scale and offset relative to the image. ``mpp``: the model's microns per
    pixel: tiles of a slide layer are read at that resolution (from the matching pyramid level)."""
    source = image_source(image_layer)
    note = resolution_note(image_layer.name, getattr(source, "mpp", None), mpp)
    return _noted(note, _extraction(source, image_layer, ann_layer, tile_size, stride, min_fraction, class_map,
                                    mpp))


def _extraction(source, image_layer, ann_layer, tile_size, stride, min_fraction, class_map, mpp):
    import napari.layers as L

    from ..core.data import annotations as A

    if ann_layer is None:
        raise HistodiffError("no annotation layer: add a Labels, Shapes or Points layer with classes")
    if isinstance(ann_layer, L.Labels):
        m = to_image(image_layer, ann_layer)  # image data -> labels data
        if abs(m[0, 1]) > 1e-9 or abs(m[1, 0]) > 1e-9:
            raise HistodiffError(f"labels layer {ann_layer.name!r} is rotated or sheared relative to the image; "
                                 "reset its rotate / shear / affine (or paint it on the image as it is).")
        data = ann_layer.data[0] if ann_layer.multiscale else ann_layer.data
        cmap = class_map or _feature_class_map(ann_layer)
        (sy, sx), (ty, tx) = np.diag(m)[:2], m[:2, 2]
        # image continuous u -> image data u - 0.5 -> labels data -> labels continuous + 0.5
        to_labels = ((sy, sx), (ty - 0.5 * sy + 0.5, tx - 0.5 * sx + 0.5))

        def labels_job():
            names = cmap or _value_names(data)  # no `class` feature: every value is a class (reads the labels)
            tiles = yield from A.label_tiles(source, data, names, tile_size, stride, min_fraction, mpp, to_labels)
            return tiles, 0

        return labels_job()
    if isinstance(ann_layer, L.Shapes):
        if not len(ann_layer.data):
            raise HistodiffError(f"shapes layer {ann_layer.name!r} is empty; draw regions around each class")
        classes = A.check_classes(_names(ann_layer, len(ann_layer.data)), len(ann_layer.data), "shape")
        polys, index = shape_polygons(ann_layer, to_image(ann_layer, image_layer))
        if not polys:
            raise HistodiffError(f"shapes layer {ann_layer.name!r} has only lines and paths; draw areas (rectangles, "
                                 "polygons, ellipses) around each class")

        def shapes_job():
            annotations = A.shapes_annotations(polys, [classes[k] for k in index])  # later shapes paint over
            tiles = yield from A.shape_tiles(source, annotations, tile_size, stride, min_fraction, mpp)
            return tiles, 0

        return shapes_job()
    if isinstance(ann_layer, L.Points):
        if not len(ann_layer.data):
            raise HistodiffError(f"points layer {ann_layer.name!r} is empty; click a point on each example")
        pts = to_level0(ann_layer.data, to_image(ann_layer, image_layer))
        return A.point_tiles(source, pts, _names(ann_layer, len(pts)), tile_size, mpp)
    raise HistodiffError(f"layer {ann_layer.name!r} is not a Labels, Shapes or Points layer")


def extract(image_layer, ann_layer, tile_size: int, stride: int, min_fraction: float, class_map=None,
            mpp: float | None = None):
    """Labeled tiles from an image layer and a Labels, Shapes or Points layer; returns (tiles, skipped).
    Runs in the calling thread (the Fine-tune widget runs :func:`extraction` on a worker)."""
    from ..core.base.events import run_to_end

    return run_to_end(extraction(image_layer, ann_layer, tile_size, stride, min_fraction, class_map, mpp))
