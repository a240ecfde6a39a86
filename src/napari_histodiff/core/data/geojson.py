"""QuPath GeoJSON annotations: read, write, and how much of each box every class covers.

Reads what QuPath 0.2-0.6 exports (File > Export objects as GeoJSON): a FeatureCollection, a bare
list of features or one Feature; Polygon / MultiPolygon (holes kept) and GeometryCollections of
them; coordinates in level-0 pixels. Unclassified objects, other object types and non-area
geometries (points, lines) are left out: counted in ``AnnotationSet.skipped``, kept as they were in
``AnnotationSet.left_out`` (and written back), and named in one message. Polygons that cross
themselves are repaired and named; a NaN coordinate is an error naming the object.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base.errors import HistodiffError

EXPORT_HINT = "export the annotations from QuPath with File > Export objects as GeoJSON"
GEOMETRY_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                  "GeometryCollection")
OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tma_core", "root")


@dataclass
class Annotation:
    geometry: object  # shapely Polygon or MultiPolygon, level-0 pixel coordinates
    class_name: str | None  # derived classes as QuPath shows them: "Dermis: Inflamed"
    object_type: str = "annotation"  # "annotation", "detection", "cell", "tile", ...
    color: tuple[int, int, int] | None = None
    name: str | None = None


@dataclass
class LeftOut:
    """A QuPath object that was not loaded, kept as it was in the file."""

    feature: object  # the GeoJSON feature
    reason: str  # "unclassified", "object type detection", "unsupported geometry (Point)", ...
    label: str  # how messages name it: "annotation 'Region 1' (unclassified)", "detection 4 (Tumor)"


@dataclass
class AnnotationSet:
    annotations: list[Annotation]
    source: str = ""  # file name, for messages
    skipped: dict[str, int] = field(default_factory=dict)  # what was left out -> how many
    left_out: list[LeftOut] = field(default_factory=list)  # the objects not loaded, as they were
    notes: list[str] = field(default_factory=list)  # per annotation: what was repaired
    _index: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def left_out_message(self, most: int = 5) -> str | None:
        """One message naming every QuPath object that was not loaded (by reason; the first ``most`` of
        each by name), or None when every object was."""
        if not self.left_out:
            return None
        by: dict[str, list[str]] = {}
        for x in self.left_out:
            by.setdefault(x.reason, []).append(x.label)
        parts = []
        for why, labels in by.items():
            shown = ", ".join(labels[:most]) + (f" and {len(labels) - most} more" if len(labels) > most else "")
            what = f"{why.removeprefix('object type ')} object{'s' * (len(labels) > 1)}" \
                if why.startswith("object type ") else why
            parts.append(f"{len(labels)} {what} ({shown})")
        n = len(self.left_out)
        return (f"{self.source}: {n} of {n + len(self.annotations)} QuPath objects are not used: "
                f"{'; '.join(parts)}")

    @property
    def class_names(self) -> list[str]:
        """Sorted unique class names."""
        return sorted({a.class_name for a in self.annotations if a.class_name is not None})

    def colors(self) -> dict[str, tuple[int, int, int]]:
        """Class name -> RGB colour (first one given); classes without a colour are absent."""
        out = {}
        for a in self.annotations:
            if a.class_name is not None and a.color is not None:
                out.setdefault(a.class_name, tuple(int(c) for c in a.color))
        return out

    def bounds(self) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1) around all annotations, or None when there are none."""
        import shapely

        if not self.annotations:
            return None
        b = shapely.total_bounds([a.geometry for a in self.annotations])
        return None if np.isnan(b).any() else tuple(float(v) for v in b)

    def _tree(self):
        """Disjoint parts of each class's union, their class index and an STRtree on them (cached)."""
        import shapely

        key = tuple((id(a.geometry), a.class_name) for a in self.annotations)
        if self._index is None or self._index[0] != key:
            parts, owner = [], []
            for c, name in enumerate(self.class_names):
                union = shapely.union_all([a.geometry for a in self.annotations if a.class_name == name])
                p = [g for g in shapely.get_parts(union) if g.geom_type == "Polygon" and g.area > 0]
                parts += p
                owner += [c] * len(p)
            parts = np.array(parts, dtype=object)
            shapely.prepare(parts)
            self._index = (key, parts, np.array(owner, dtype=np.int64), shapely.STRtree(parts))
        return self._index[1:]

    def coverage(self, boxes) -> np.ndarray:
        """(N, C) fraction of each box (x0, y0, x1, y1 in level-0 px) covered by each class's union.

        C = len(class_names). Only boxes the STRtree finds near a polygon are intersected; boxes
        wholly inside a polygon take their full area without an intersection."""
        import shapely

        boxes = _check_boxes(boxes)
        out = np.zeros((len(boxes), len(self.class_names)))
        if not len(boxes) or not out.shape[1]:
            return out
        parts, owner, tree = self._tree()
        geoms = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])
        bi, pi = tree.query(geoms)  # bounding boxes overlap; exact tests on the prepared parts are fast
        near = shapely.intersects(parts[pi], geoms[bi])  # (the tree's own predicate prepares the boxes: slow)
        bi, pi = bi[near], pi[near]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        hit = area[bi]
        edge = ~shapely.contains(parts[pi], geoms[bi])
        hit[edge] = shapely.area(shapely.intersection(geoms[bi[edge]], parts[pi[edge]]))
        np.add.at(out, (bi, owner[pi]), hit)  # parts of one class are disjoint: areas add up
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(area[:, None] > 0, out / area[:, None], 0.0)
        return np.clip(out, 0.0, 1.0)

    def label_boxes(self, boxes, min_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """(labels, fractions) per box: labels index class_names, -1 when no class covers >= min_fraction.

        Overlap rule: the class covering the largest fraction of the box wins; ties go to the class
        listed first in class_names. fractions is the covered fraction of that class (also for -1)."""
        if not 0 < min_fraction <= 1:
            raise HistodiffError(f"the minimum annotated fraction must be in (0, 1] (got {min_fraction}), e.g. 0.5.")
        cov = self.coverage(boxes)
        if not cov.shape[1]:
            return np.full(len(cov), -1, dtype=np.int64), np.zeros(len(cov))
        best = np.argmax(cov, axis=1)  # first maximum = first class in class_names
        frac = cov[np.arange(len(cov)), best]
        return np.where(frac >= min_fraction - 1e-9, best, -1).astype(np.int64), frac


def _check_boxes(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim == 1 and boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise HistodiffError(f"boxes must be an (N, 4) array of x0, y0, x1, y1 (got shape {boxes.shape}).")
    return boxes


def _object_type(feature: dict, props: dict) -> str:
    """QuPath object type, lower case; QuPath 0.2 wrote it as the feature id ("PathDetectionObject")."""
    t = props.get("objectType") or props.get("object_type")
    for alt in (props.get("type"), feature.get("id")):
        if not isinstance(t, str) and isinstance(alt, str) and _short(alt) in OBJECT_TYPES:
            t = alt
    return _short(t) if isinstance(t, str) and t else "annotation"


def _short(t: str) -> str:
    if t.startswith("Path") and t.endswith("Object"):
        t = t[4:-6]
    return {"tmacore": "tma_core"}.get(t.lower(), t.lower())


def _classification(props: dict) -> tuple[str | None, tuple[int, int, int] | None]:
    c = props.get("classification")
    if isinstance(c, str):
        return c.strip() or None, None
    if not isinstance(c, dict):
        return None, None
    names = c.get("names")
    name = ": ".join(str(n) for n in names) if isinstance(names, list) and names else c.get("name")
    color = c.get("color")
    if isinstance(color, (list, tuple)) and len(color) >= 3:
        color = tuple(int(v) for v in color[:3])
    elif isinstance(c.get("colorRGB"), int):  # signed ARGB integer (older QuPath)
        v = c["colorRGB"]
        color = ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    else:
        color = None
    return (str(name).strip() or None) if name is not None else None, color


def _polygonal(g):
    """(the polygonal parts of g, 2-D and valid, or None without any; why it was repaired, or None)."""
    import shapely

    g = shapely.force_2d(g)
    if g.geom_type not in ("Polygon", "MultiPolygon"):
        polys = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
        if not polys:
            return None, None
        g = shapely.union_all(polys)
    if g.is_valid:
        return g, None
    why = shapely.is_valid_reason(g)  # e.g. "Self-intersection[5 5]": a bow-tie, a ring crossing a hole
    polys = [p for p in shapely.get_parts(shapely.make_valid(g)) if p.geom_type in ("Polygon", "MultiPolygon")]
    return (shapely.union_all(polys) if polys else shapely.Polygon()), why


def _finite(coords) -> bool:
    """False when a GeoJSON coordinate array holds NaN or infinity (JSON NaN / Infinity)."""
    if isinstance(coords, (list, tuple)):
        return all(_finite(c) for c in coords)
    return not isinstance(coords, float) or np.isfinite(coords)


def _geometry_finite(geom) -> bool:
    if not isinstance(geom, dict):
        return True
    if isinstance(geom.get("geometries"), list):
        return all(_geometry_finite(g) for g in geom["geometries"])
    return _finite(geom.get("coordinates"))


def describe(k: int, feature, props: dict | None = None) -> str:
    """How a message names object ``k`` (0-based) of a file: its type, name or number, and class."""
    props = props if props is not None else (feature.get("properties") if isinstance(feature, dict) else None)
    props = props if isinstance(props, dict) else {}
    otype = _object_type(feature, props) if isinstance(feature, dict) else "object"
    name = props.get("name")
    cls, _ = _classification(props)
    who = f"{otype} {name!r}" if name not in (None, "") else f"{otype} {k + 1}"
    return f"{who} ({cls})" if cls else who


def _features(data, name: str) -> list:
    if isinstance(data, dict):
        if isinstance(data.get("features"), list):
            return data["features"]
        if "geometry" in data:
            return [data]
        if data.get("type") in GEOMETRY_TYPES:
            return [{"type": "Feature", "geometry": data, "properties": {}}]
    if isinstance(data, list) and (not data or any(isinstance(f, dict) and "geometry" in f for f in data)):
        return data
    raise HistodiffError(f"{name} is JSON but not GeoJSON (no 'features' or 'geometry'): {EXPORT_HINT} "
                         "(not measurements or a project file) and try again.")


def _nothing_usable(name: str, skipped: Counter, object_types) -> HistodiffError:
    if not skipped:
        return HistodiffError(f"{name} holds no objects: {EXPORT_HINT} after drawing and classifying areas.")
    what = ", ".join(f"{n} {k.removeprefix('object type ')}" for k, n in skipped.items())
    fixes = []
    if skipped.get("unclassified"):
        fixes.append("classify the annotations in QuPath (Set class) and export again")
    others = sorted(k.removeprefix("object type ") for k in skipped if k.startswith("object type "))
    if others:
        fixes.append(f"use the {' and '.join(others)} objects too ({{opt:detections}})")
    if any(k.startswith("unsupported") for k in skipped):
        fixes.append("draw areas (polygon, rectangle, brush), not points or lines")
    if skipped.get("empty or invalid geometry") or skipped.get("not a feature"):
        fixes.append(f"check the file ({EXPORT_HINT})")
    return HistodiffError(f"{name} has no usable annotations ({what} left out): {'; or '.join(fixes)}.")


def read_geojson(path, object_types=("annotation",)) -> AnnotationSet:
    """Classified Polygon/MultiPolygon objects of the given QuPath object types from a GeoJSON file.

    Every other object is kept as it was in ``left_out`` (named by :meth:`AnnotationSet.left_out_message`,
    written back by :func:`write_geojson`); a polygon that crosses itself is repaired (shapely
    ``make_valid``) and named in ``notes``; a NaN or infinite coordinate of a used object is an error."""
    import shapely.geometry
    from shapely.errors import ShapelyError

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise HistodiffError(f"no GeoJSON file at {path}: check the path (or {EXPORT_HINT}).")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        raise HistodiffError(f"{name} is not a JSON file ({type(e).__name__}: {e}): {EXPORT_HINT} "
                             "and try again.") from None
    wanted = {str(t).lower() for t in object_types}
    anns, skipped, left_out, notes = [], Counter(), [], []

    def leave(k, f, why):
        skipped[why] += 1
        left_out.append(LeftOut(f, why, describe(k, f) if isinstance(f, dict) else f"object {k + 1}"))

    for k, f in enumerate(_features(data, name)):
        if not isinstance(f, dict):
            leave(k, f, "not a feature")
            continue
        props = f.get("properties") if isinstance(f.get("properties"), dict) else {}
        otype = _object_type(f, props)
        if otype not in wanted:
            leave(k, f, f"object type {otype}")
            continue
        geom = f.get("geometry")
        gtype = geom.get("type") if isinstance(geom, dict) else None
        if isinstance(gtype, str) and gtype not in GEOMETRY_TYPES:
            leave(k, f, f"unsupported geometry ({gtype})")
            continue
        cls, color = _classification(props)
        if not _geometry_finite(geom):
            if cls is None:
                leave(k, f, "unclassified")
                continue
            raise HistodiffError(f"{name}: {describe(k, f, props)} has a coordinate that is not a number (NaN or "
                                 "infinity); fix or delete that object in QuPath and export the file again.")
        try:
            g = shapely.geometry.shape(geom)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, ShapelyError):  # null, malformed
            g = None
        try:
            poly, repaired = (None, None) if g is None or g.is_empty else _polygonal(g)
        except ShapelyError as e:  # GEOS refuses the geometry: name the object, not the library
            raise HistodiffError(f"{name}: the outline of {describe(k, f, props)} cannot be read ({e}); fix or "
                                 "delete that object in QuPath and export the file again.") from None
        if poly is None and g is not None and not g.is_empty:
            leave(k, f, f"unsupported geometry ({g.geom_type})")
            continue
        if poly is None or poly.is_empty or poly.area <= 0:
            leave(k, f, "empty or invalid geometry")
            continue
        if cls is None:
            leave(k, f, "unclassified")
            continue
        if repaired:
            notes.append(f"{name}: {describe(k, f, props)} crosses itself ({repaired}); it was repaired "
                         f"(shapely make_valid) into {len(shapely.get_parts(poly))} polygon(s) of "
                         f"{poly.area:.0f} px\u00b2 in all: check it in QuPath")
        label = props.get("name")
        anns.append(Annotation(poly, cls, otype, color, str(label) if label not in (None, "") else None))
    if not anns:
        raise _nothing_usable(name, skipped, object_types)
    return AnnotationSet(anns, name, dict(skipped), left_out, notes)


def count_objects(classes, objects) -> dict[str, int]:
    """QuPath objects per class of a napari layer's ``class`` and ``object`` features: the pieces of one
    object (same ``object`` number, e.g. the parts of a MultiPolygon or a polygon cut around its holes)
    count once; shapes with object -1 or none (drawn in napari) count one each. Unclassified: key ""."""
    seen, out = set(), Counter()
    for k, (c, o) in enumerate(zip(classes, objects)):
        c = "" if c is None or c != c else str(c).strip()  # NaN -> ""
        try:
            o = int(float(o))
        except (TypeError, ValueError):
            o = -1
        key = ("object", o) if o >= 0 else ("shape", k)
        if key not in seen:
            seen.add(key)
            out[c] += 1
    return dict(out)


def write_geojson(path, annotations: list[Annotation], kept=()) -> None:
    """A QuPath-importable FeatureCollection (File > Import objects, or drag onto the image); ``kept``:
    GeoJSON features written as they are after the annotations (the objects a reader left out)."""
    import shapely.geometry

    features = []
    for a in annotations:
        props = {"objectType": a.object_type or "annotation"}
        if a.name:
            props["name"] = a.name
        if a.class_name:
            cls = {"name": a.class_name}
            if ": " in a.class_name:
                cls["names"] = a.class_name.split(": ")
            if a.color is not None:
                cls["color"] = [int(c) for c in a.color]
            props["classification"] = cls
        features.append({"type": "Feature", "id": str(uuid.uuid4()),
                         "geometry": shapely.geometry.mapping(a.geometry), "properties": props})
    features += [f for f in kept if isinstance(f, dict)]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")
    os.replace(tmp, path)
