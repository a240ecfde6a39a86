"""napari readers: whole-slide images, QuPath GeoJSON annotations and exported augmentation sets.

- Slides (SVS, NDPI, MRXS, SCN, BIF, VMS/VMU, SVSLIDE, DICOM, OME-TIFF, pyramidal TIFF) open as a
  lazy multiscale RGB Image layer: one dask array per pyramid level over ``Slide.level_array``, so
  napari decodes only the tiles it shows. The layer's ``scale`` is the level-0 pixel size in
  micrometres (units um) when the file says it (napari scales the other levels by their
  downsample), and ``metadata`` holds ``slide_path``, ``mpp``, ``level_dimensions`` and
  ``level_downsamples`` (the Fine-tune widget reads tiles from the file at the model's resolution).
  Plain .tif / .tiff files are claimed too, as OME-TIFF and generic pyramidal slides use those names
  (napari's own reader would load all of level 0 into memory); a TIFF that is not one RGB(A) image
  (a stack, a grayscale or multichannel fluorescence image) is left to napari's own reader.
- QuPath GeoJSON (File > Export objects as GeoJSON; classified annotation objects) opens as a Shapes
  layer (the file's other objects, e.g. unclassified annotations and detections, are named in one
  notification, kept in ``metadata["qupath_kept"]`` and written back by the writer) of polygons with ``class``, ``name``, ``object`` and ``object_type`` features and the QuPath
  class colours (also in ``metadata["class_colors"]``, class -> ``#rrggbb``, which the Annotate panel's
  class table shows and keeps). napari's Shapes layer cannot draw holes, so a polygon with holes is cut into
  hole-free pieces along vertical lines through its holes (the covered area is exact, the cuts show
  as edges); the pieces of one QuPath object share its ``object`` number, and the writer
  (``_writer.py``) joins them again. GeoJSON coordinates are level-0 pixels: the layer gets the scale
  of the slide of the same name beside it (``X.geojson`` <-> ``X.svs``, ``X.ome.tif``, ...) so that it
  lies on that slide; without one, scale 1 (it then lies on any image opened at 1 px per unit).
  Its ``translate`` is minus half a pixel: GeoJSON's pixel (0, 0) spans [0, 1), napari's is centred
  on 0, so the layer's data coordinates are exactly the file's (x, y) as (row = y, col = x).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

CHUNK = 512  # dask chunk side (pixels) of the slide levels
SMALL = 8192  # coarser levels are made on the fly until the coarsest is at most this many px
FACE_ALPHA = 0.3
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]
VENDOR = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")
TIFF = (".ome.tif", ".ome.tiff", ".tif", ".tiff")


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        if (p / "manifest.csv").is_file() and (p / "export.json").is_file():
            return read_set
        return None
    name = p.name.lower()
    if name.endswith(".geojson"):
        return read_annotations
    if name.endswith(VENDOR):
        return read_slide
    if name.endswith(TIFF) and _rgb_tiff(p):
        return read_slide
    return None


def _rgb_tiff(path: Path) -> bool:
    """True for a vendor whole-slide TIFF (OpenSlide knows it) or a TIFF whose first image is RGB(A)."""
    try:
        import openslide

        fmt = openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - no OpenSlide, or not its format
        fmt = None
    if fmt and fmt != "generic-tiff":
        return True
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            sizes = dict(zip(series.axes, series.shape))
            extra = [c for c, n in sizes.items() if c not in "YXSC" and n > 1]
            chans = [n for c, n in sizes.items() if c in "SC"]
            return not extra and len(chans) == 1 and chans[0] in (3, 4) and {"Y", "X"} <= set(sizes)
    except Exception:  # noqa: BLE001 - not a TIFF we can read: let another reader try
        return False


# -- slides ---------------------------------------------------------------------------------------

def slide_layer(slide) -> tuple:
    """The napari layer data tuple of an open slide: lazy levels, scale in micrometres, metadata."""
    import dask.array as da

    token = uuid.uuid4().hex
    meta = np.empty((0, 0, 0), np.uint8)
    levels = [da.from_array(slide.level_array(k), chunks=(CHUNK, CHUNK, 3), lock=False, meta=meta,
                            name=f"slide-{token}-{k}") for k in range(len(slide.dimensions))]
    while max(levels[-1].shape[:2]) > SMALL:
        # no (or too short a) pyramid in the file: coarser levels averaged from the finer one on demand
        levels.append(da.coarsen(np.mean, levels[-1], {0: 4, 1: 4}, trim_excess=True).astype(np.uint8))
    kwargs = {"name": slide.path.name, "rgb": True, "contrast_limits": (0, 255),
              "metadata": {"slide_path": str(slide.path), "mpp": slide.mpp, "mpp_source": slide.mpp_source,
                           "slide_format": slide.format, "level_dimensions": [list(d) for d in slide.dimensions],
                           "level_downsamples": list(slide.downsamples), "notes": list(slide.notes)}}
    if slide.mpp:
        kwargs.update(scale=(slide.mpp, slide.mpp), units=("um", "um"))
    if len(levels) > 1:
        return levels, {**kwargs, "multiscale": True}, "image"
    return levels[0], {**kwargs, "multiscale": False}, "image"


def read_slide(path):
    from .core.data.slides import open_slide

    p = Path(path[0] if isinstance(path, list) else path)
    return [slide_layer(open_slide(p))]


# -- QuPath GeoJSON -------------------------------------------------------------------------------

def slide_beside(path) -> Path | None:
    """The slide named like the GeoJSON file (``X.geojson`` -> ``X.svs``, ``X.ome.tiff``, ...) beside it."""
    p = Path(path)
    stem = p.name.split(".")[0]
    found = [f for f in sorted(p.parent.iterdir()) if f.name.split(".")[0] == stem and f.is_file()
             and f.name.lower().endswith(VENDOR + TIFF)]
    return found[0] if found else None


def _slide_mpp(path) -> float | None:
    from .core.base.errors import HistodiffError
    from .core.data.slides import open_slide

    try:
        with open_slide(path) as slide:
            return slide.mpp
    except (HistodiffError, OSError):
        return None


def class_colors(annotations) -> dict[str, tuple]:
    """Class name -> (r, g, b) 0-255: QuPath's class colour, else one of the palette's."""
    classes = annotations.class_names
    given = annotations.colors()
    spare = iter(PALETTE * (1 + len(classes) // len(PALETTE)))
    return {c: tuple(given[c]) if c in given else next(spare) for c in classes}


def hex_color(rgb) -> str:
    """(r, g, b) 0-255 -> ``#rrggbb``."""
    return "#" + "".join(f"{int(round(v)):02x}" for v in list(rgb)[:3])


def annotation_shapes(annotations) -> tuple[list, dict, np.ndarray, np.ndarray]:
    """(polygons as (N, 2) row, col arrays, features, face colours, edge colours) of an AnnotationSet."""
    from .core.data.annotations import hole_free_parts

    colors = class_colors(annotations)
    data, feats, rgb = [], {"class": [], "name": [], "object": [], "object_type": []}, []
    for k, a in enumerate(annotations.annotations):
        color = a.color or colors.get(a.class_name) or (255, 255, 255)
        for part in hole_free_parts(a.geometry):
            xy = np.asarray(part.exterior.coords)[:-1]
            data.append(xy[:, ::-1].copy())
            feats["class"].append(a.class_name or "")
            feats["name"].append(a.name or "")
            feats["object"].append(k)
            feats["object_type"].append(a.object_type or "annotation")
            rgb.append(color)
    rgb = np.asarray(rgb, dtype=float).reshape(-1, 3) / 255.0
    face = np.concatenate([rgb, np.full((len(rgb), 1), FACE_ALPHA)], 1)
    edge = np.concatenate([rgb, np.ones((len(rgb), 1))], 1)
    return data, feats, face, edge


KEPT = "qupath_kept"  # metadata key of the GeoJSON features the layer does not show


def annotations_message(annotations) -> str | None:
    """One message naming every QuPath object the layer does not show and every repaired polygon."""
    parts = []
    left = annotations.left_out_message()
    if left:
        parts.append(f"{left}. They are not shown, and are kept when the layer is saved as GeoJSON")
    parts += annotations.notes
    return ". ".join(parts) if parts else None


def _notify(message: str) -> None:
    try:
        from napari.utils.notifications import show_warning
    except ImportError:  # napari not installed: the message stays in the layer's metadata
        return
    show_warning(message)


def read_annotations(path):
    import pandas as pd

    from .core.data.geojson import read_geojson

    p = Path(path[0] if isinstance(path, list) else path)
    annotations = read_geojson(p)
    slide = slide_beside(p)
    mpp = _slide_mpp(slide) if slide is not None else None
    data, feats, face, edge = annotation_shapes(annotations)
    message = annotations_message(annotations)
    if message:
        _notify(message)
    s = mpp or 1.0
    extent = max((float(np.abs(d).max()) for d in data), default=0.0)
    width = max(2.0, extent / 400)  # outlines visible when the whole slide is in view
    kwargs = {"name": p.name, "shape_type": "polygon", "features": pd.DataFrame(feats), "face_color": face,
              "edge_color": edge, "edge_width": width, "scale": (s, s), "translate": (-s / 2, -s / 2),
              # shapes drawn later: the last class, and objects of their own (object -1) for the writer
              "feature_defaults": {"class": feats["class"][-1] if feats["class"] else "", "name": "",
                                   "object": -1, "object_type": "annotation"},
              "metadata": {"geojson_path": str(p), "slide_path": str(slide) if slide else None, "mpp": mpp,
                           "skipped": dict(annotations.skipped),
                           # QuPath objects not shown (unclassified, detections, points, ...): the writer keeps them
                           KEPT: [x.feature for x in annotations.left_out if isinstance(x.feature, dict)],
                           "message": message,
                           # the class table (Annotate panel) shows and keeps these colours
                           "class_colors": {c: hex_color(rgb) for c, rgb in class_colors(annotations).items()}}}
    if mpp:
        kwargs["units"] = ("um", "um")
    return [(data, kwargs, "shapes")]


# -- exported augmentation sets ------------------------------------------------------------------

def read_set(path):
    import pandas as pd

    from .core.generate.export import read_export

    p = Path(path[0] if isinstance(path, list) else path)
    tiles, rows = read_export(p)
    meta = {"features": pd.DataFrame(rows), "histodiff_export": str(p)}
    return [(tiles, {"name": f"augmentation set: {p.name}", "rgb": True, "metadata": meta}, "image")]
