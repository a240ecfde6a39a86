"""napari writer: a Shapes layer -> QuPath GeoJSON (File > Import objects in QuPath, or drag the file in).

Each shape becomes an annotation classified by its ``class`` feature (unclassified when empty),
named by its ``name`` feature, coloured by its edge colour. Shapes that share an ``object`` number
(the pieces the reader cut out of one QuPath object, e.g. around holes, or the parts of a
MultiPolygon) are joined into one object again; shapes drawn later have ``object`` -1 (the reader's
default for new shapes) and are objects of their own. Rectangles, polygons and ellipses (64-point
polygons) are areas; paths and lines are written as LineStrings. The QuPath objects the reader did
not show (``metadata['qupath_kept']``: unclassified annotations, detections, points, ...) are written
back as they were.

Coordinates: GeoJSON wants level-0 pixels of the slide. The layer's data go to world coordinates
through its scale, translate, rotate, shear and affine, then to level-0 pixels by dividing by the
slide's pixel size: ``metadata['mpp']`` when the layer has it (layers from this plugin's GeoJSON
reader), else the layer's own scale. A layer made from the slide layer (napari's new-shapes button
with the slide selected copies its scale) or read from GeoJSON is thus written in the slide's
pixels; a layer drawn at scale 1 over a slide shown in micrometres would be written in micrometres.
Half a pixel is added: napari centres pixel (0, 0) on 0, GeoJSON's spans [0, 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _matrix(meta: dict, ndim: int) -> np.ndarray:
    """3x3 affine (row, col) data -> world from a layer's state."""
    from napari.utils.transforms import Affine

    inner = Affine(scale=meta.get("scale"), translate=meta.get("translate"), rotate=meta.get("rotate"),
                   shear=meta.get("shear"), ndim=ndim).affine_matrix
    outer = np.asarray(meta["affine"], dtype=float) if meta.get("affine") is not None else np.eye(ndim + 1)
    return (outer @ inner)[-3:, -3:]


def _text(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()


def _object(v) -> int | None:
    """The QuPath object a shape is a piece of (the reader's ``object`` feature), None for new shapes (-1)."""
    try:
        k = int(float(v))
    except (TypeError, ValueError):
        return None
    return k if k >= 0 else None


def shapes_annotations(data, meta: dict) -> list:
    """QuPath annotations (core ``Annotation``) of a Shapes layer's data and state, in level-0 pixels."""
    import shapely
    from shapely.geometry import LineString, Polygon

    from .core.base.errors import HistodiffError
    from .core.data.annotations import ellipse_ring
    from .core.data.geojson import Annotation

    ndim = int(meta.get("ndim") or (np.asarray(data[0]).shape[1] if len(data) else 2))
    if ndim != 2:
        raise HistodiffError(f"layer {meta.get('name')!r} has {ndim}-D shapes; GeoJSON holds 2-D annotations. "
                             "Save a 2-D Shapes layer (drawn on the slide).")
    m = _matrix(meta, ndim)
    px = (meta.get("metadata") or {}).get("mpp")
    px = np.array([px, px], float) if px else np.abs(np.asarray(meta.get("scale") or (1, 1), float)[-2:])
    feats = meta.get("features")
    n = len(data)

    def column(name):
        if feats is not None and name in feats and len(feats) == n:
            return list(feats[name])
        return [None] * n

    classes, names, objects, types = column("class"), column("name"), column("object"), column("object_type")
    edges = np.asarray(meta.get("edge_color") if meta.get("edge_color") is not None else np.ones((n, 4)), float)
    edges = np.broadcast_to(edges.reshape(-1, 4), (n, 4)) if edges.size else np.ones((n, 4))
    kinds = meta.get("shape_type") or ["polygon"] * n
    groups: dict = {}
    for k in range(n):
        obj = _object(objects[k])
        groups.setdefault(("object", obj) if obj is not None else ("shape", k), []).append(k)
    out = []
    for members in groups.values():
        areas, lines = [], []
        for k in members:
            verts = np.asarray(data[k], float)[:, -2:]
            if kinds[k] == "ellipse":
                verts = ellipse_ring(verts)
            rc = (verts @ m[:2, :2].T + m[:2, 2]) / px + 0.5
            xy = rc[:, ::-1]
            if kinds[k] in ("path", "line"):
                if len(xy) >= 2:
                    lines.append(LineString(xy))
            elif len(xy) >= 3:
                areas.append(Polygon(xy))
        first = members[0]
        cls = _text(classes[first]) or None
        color = tuple(round(float(c) * 255) for c in edges[first][:3])
        kw = {"class_name": cls, "object_type": _text(types[first]) or "annotation", "color": color,
              "name": _text(names[first]) or None}
        if areas:
            g = shapely.union_all([shapely.make_valid(a) for a in areas])
            polys = [p for p in shapely.get_parts(g) if p.geom_type == "Polygon" and p.area > 0]
            if polys:
                g = shapely.simplify(shapely.union_all(polys), 0)  # drop the cut vertices of joined pieces
                out.append(Annotation(g, **kw))
        out += [Annotation(line, **kw) for line in lines]
    return out


def write_shapes(path, data, meta: dict) -> list[str]:
    """Write one Shapes layer as QuPath GeoJSON; returns the written path."""
    from .core.base.errors import HistodiffError
    from .core.data.geojson import write_geojson

    path = Path(path)
    if not path.name.lower().endswith((".geojson", ".json")):
        path = path.with_name(path.name + ".geojson")
    annotations = shapes_annotations(data, meta)
    kept = (meta.get("metadata") or {}).get("qupath_kept") or []  # the reader's objects the layer did not show
    if not annotations and not kept:
        raise HistodiffError(f"layer {meta.get('name')!r} has no shapes to save; draw regions first.")
    write_geojson(path, annotations, kept=kept)
    return [str(path)]
