"""Slides cut into tiles at the model's resolution, labelled by QuPath annotations; the tiles command."""

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.data.geojson import Annotation, write_geojson
from napari_histodiff.core.data.slide_tiles import SlideTiles
from napari_histodiff.core.data.opening import open_tiles

SLIDES = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
PINK, PURPLE = (230, 150, 190), (120, 60, 150)


def slide_image(h=2048, w=3072):
    """Glass, with a pink tissue block (x 512-1536, y 512-1536) and a purple one (x 2048-3072, y 1024-2048)."""
    a = np.full((h, w, 3), 245, np.uint8)
    a[512:1536, 512:1536] = PINK
    a[1024:2048, 2048:3072] = PURPLE
    return a


def write_pyramid(path, data, mpp=0.25):
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(data, tile=(256, 256), compression="zlib", photometric="rgb", subifds=2,
                 resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
        for k in (2, 4):
            tw.write(data[::k, ::k], tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=1)
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_pyramid(tmp_path_factory.mktemp("slide") / "case1.tif", slide_image())


def test_tiles_come_from_the_level_of_the_target_resolution(slide):
    ts = SlideTiles(slide, 64, mpp=1.0)  # 4 level-0 px per tile px: level 2 (downsample 4), no resize
    assert ts.level == 2 and ts.read_size == 64 and ts.xy.dtype == np.int32
    got = {(int(x), int(y)) for x, y in ts.xy}
    pink = {(x, y) for x in range(512, 1536, 256) for y in range(512, 1536, 256)}
    purple = {(x, y) for x in range(2048, 3072, 256) for y in range(1024, 2048, 256)}
    assert got == pink | purple  # the tissue grid, found on the thumbnail
    i = [tuple(map(int, xy)) for xy in ts.xy].index((512, 512))
    assert ts[i].shape == (64, 64, 3) and (ts[i] == PINK).all()
    half = SlideTiles(slide, 64, mpp=0.375)  # 1.5 level-0 px per tile px: level 0 read at 96 px, resized
    assert half.level == 0 and half.read_size == 96
    inside = next(i for i, (x, y) in enumerate(half.xy) if 512 <= min(x, y) and max(x, y) <= 1536 - 96)
    assert np.abs(half[inside].astype(int) - PINK).max() <= 1


def test_annotations_label_the_tiles_they_cover(slide, tmp_path):
    from shapely.geometry import box

    write_geojson(tmp_path / "case1.geojson", [
        Annotation(box(512, 512, 1536, 1536), "Stroma", "annotation", (255, 0, 0)),
        Annotation(box(2048, 1024, 2560, 2048), "Tumor", "annotation", (0, 0, 255)),
    ])
    ts = open_tiles([slide], 64, mpp=1.0, annotations=[tmp_path / "case1.geojson"])
    assert ts.class_names == ["Stroma", "Tumor"]
    labels = {tuple(map(int, xy)): ts.label(i) for i, xy in enumerate(ts.xy)}
    assert sum(v == 0 for v in labels.values()) == 16 and sum(v == 1 for v in labels.values()) == 8
    assert all(x < 2560 for (x, y), v in labels.items() if v == 1)
    rec = ts.record(0)
    assert rec["class"] == "Stroma" and rec["level"] == 2 and rec["covered"] == 1.0
    # found beside the slide when not given
    (slide.parent / "case1.geojson").write_bytes((tmp_path / "case1.geojson").read_bytes())
    try:
        assert len(open_tiles([slide], 64, mpp=1.0, annotations=[])) == len(ts)
    finally:
        (slide.parent / "case1.geojson").unlink()


def test_clear_errors(slide, tmp_path):
    from shapely.geometry import box

    with pytest.raises(HistodiffError, match="does not say its microns per pixel"):
        no_mpp = tmp_path / "plain.tif"
        tifffile.imwrite(no_mpp, slide_image(512, 512), photometric="rgb")
        SlideTiles(no_mpp, 64, mpp=1.0)
    assert len(SlideTiles(tmp_path / "plain.tif", 64, scale=0.5, tissue_filter=False)) == 16
    with pytest.raises(HistodiffError, match="covers 8192 px of case1.tif, which is only 3072x2048"):
        SlideTiles(slide, 1024, mpp=2.0)
    write_geojson(tmp_path / "far.geojson", [Annotation(box(9000, 9000, 9500, 9500), "A", "annotation")])
    with pytest.raises(HistodiffError, match="lie outside case1.tif"):
        open_tiles([slide], 64, mpp=1.0, annotations=[tmp_path / "far.geojson"])
    with pytest.raises(HistodiffError, match="no annotations for slide"):
        open_tiles([slide], 64, mpp=1.0, annotations=[])


def test_memory_does_not_hold_the_slide(tmp_path):
    """A 32k x 32k px slide (glass but for one block): the tile set holds coordinates, not pixels."""
    import tracemalloc

    from slide_data import write_slide

    path = write_slide(tmp_path / "big.tif", 32768, 32768, [(4096, 4096, 6144, 6144, PINK)])
    tracemalloc.start()
    ts = SlideTiles(path, 64, mpp=0.5)  # 2 level-0 px per tile px: level 1
    tiles = [ts[i] for i in range(0, len(ts), 7)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(ts) == (2048 // 128) ** 2 and all((t == PINK).all() for t in tiles)
    # level 0 alone would be 3.2 GB; the thumbnail is made block by block from level 2
    assert peak < 300e6, f"{peak / 1e6:.0f} MB traced"


def test_tiles_command_writes_an_image_folder_and_shards(slide, tmp_path):
    from shapely.geometry import box

    from napari_histodiff.cli import main

    write_geojson(tmp_path / "case1.geojson", [Annotation(box(512, 512, 1536, 1536), "Stroma: Inflamed", "annotation")])
    out = tmp_path / "tiles"
    assert main(["tiles", str(slide), "--annotations", str(tmp_path / "case1.geojson"), "--tile-size", "64",
                 "--mpp", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "tiles.csv")))
    assert len(rows) == 16 and {r["class"] for r in rows} == {"Stroma: Inflamed"}
    assert all((out / r["file"]).is_file() and float(r["mpp"]) == pytest.approx(1.0) for r in rows)
    again = open_tiles([out], 64)  # the folder reads back as labelled tiles
    assert len(again) == 16 and len(again.class_names) == 1 and (again[0] == PINK).all()
    shards = tmp_path / "shards"
    assert main(["tiles", str(slide), "--tile-size", "64", "--mpp", "1", "--shard-size", "10",
                 "--out", str(shards)]) == 0
    names = sorted(p.name for p in shards.glob("*.tar"))
    assert names == [f"shard-00000{k}.tar" for k in range(4)]  # 32 tissue tiles, 10 per shard
    with tarfile.open(shards / names[0]) as tar:
        members = tar.getnames()
        assert len(members) == 20 and json.loads(tar.extractfile(members[1]).read())["level"] == 2
    sharded = open_tiles([shards], 64)  # what pretrain reads: the same tiles as the slide gives
    direct = SlideTiles(slide, 64, mpp=1.0)
    assert len(sharded) == len(direct) == 32 and sharded.class_names == []
    assert all((sharded[i] == direct[i]).all() for i in (0, 13, 31))
    assert main(["tiles", str(slide), "--tile-size", "64", "--out", str(tmp_path / "notes")]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("mine")
    assert main(["tiles", str(slide), "--tile-size", "64", "--out", str(tmp_path / "mine"), "--overwrite"]) == 2


def test_real_aperio_slide_and_its_qupath_annotations(tmp_path):
    if not (SLIDES / "cmu_small_region.svs").is_file():
        pytest.skip("shared slide data not present")
    ts = open_tiles([SLIDES / "cmu_small_region.svs"], 64, mpp=1.0,
                    annotations=[SLIDES / "cmu_small_region.geojson"])
    assert ts.class_names == ["Dermis", "Dermis: Inflamed", "Epidermis"]
    counts = np.bincount([ts.label(i) for i in range(len(ts))], minlength=3)
    assert (counts > 0).all()
    tile = ts[0]
    assert tile.shape == (64, 64, 3) and tile.std() > 5  # tissue, not glass
    unlabelled = open_tiles([SLIDES / "cmu_small_region.svs"], 64, mpp=2.0)
    assert 10 < len(unlabelled) < (2220 // 256) * (2967 // 256)  # tissue only


def test_finetune_takes_annotated_slides(slide, tmp_path, trained_bundle):
    import shutil

    from shapely.geometry import box

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.formats.bundle import load_bundle, read_meta, write_meta
    from napari_histodiff.core.jobs.finetune import FinetuneOptions, finetune

    pre = tmp_path / "pre"
    shutil.copytree(trained_bundle, pre)
    meta = read_meta(pre)
    meta["microns_per_pixel"] = 2.0  # the model's tiles: 32 px at 2 um/px = 256 level-0 px of the slide
    write_meta(pre, meta)
    case = tmp_path / "case1.tif"
    shutil.copy(slide, case)
    write_geojson(tmp_path / "case1.geojson", [  # found beside the slide
        Annotation(box(512, 512, 1536, 1536), "Stroma", "annotation"),
        Annotation(box(2048, 1024, 3072, 2048), "Tumor", "annotation")])
    out = tmp_path / "ft"
    result = run_to_end(finetune(FinetuneOptions(model=pre, labeled=[case], out=out, unet_steps=0,
                                                 classifier_steps=2, selection_steps=2, min_tiles_per_class=2,
                                                 device="cpu")))
    assert result["class_counts"] == {"Stroma": 16, "Tumor": 16}
    assert load_bundle(out, device="cpu").class_names == ["Stroma", "Tumor"]


# -- tile names, class folders and the one tiling rule -------------------------------------------------

def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))


@pytest.mark.parametrize("shards", [0, 10])
def test_two_slides_of_one_name_in_two_folders_lose_no_tile(slide, tmp_path, shards):
    """Issue 27.3: a/case1.tif and b/case1.tif gave the same tile names (32 manifest rows, 16 files)."""
    from shapely.geometry import box

    from napari_histodiff.cli import main

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "case1.tif").write_bytes(slide.read_bytes())
    write_geojson(tmp_path / "case1.geojson", [Annotation(box(512, 512, 1536, 1536), "Tumor/Positive", "annotation")])
    out = tmp_path / "tiles"
    args = ["tiles", str(tmp_path / "a" / "case1.tif"), str(tmp_path / "b" / "case1.tif"), "--tile-size", "64",
            "--mpp", "1", "--annotations", str(tmp_path / "case1.geojson"), "--out", str(out)]
    assert main(args + (["--shard-size", str(shards)] if shards else [])) == 0
    rows = list(csv.DictReader(open(out / "tiles.csv", encoding="utf-8")))
    assert len(rows) == 32 and {r["class"] for r in rows} == {"Tumor/Positive"}  # the QuPath name in the manifest
    assert {r["slide"] for r in rows} == {str(tmp_path / d / "case1.tif") for d in "ab"}
    files = [r["file"] for r in rows]
    assert len(set(files)) == len(files) == 32
    if shards:
        keys = []
        for tar in sorted(out.glob("*.tar")):
            with tarfile.open(tar) as t:
                keys += [n for n in t.getnames() if n.endswith(".png")]
        assert sorted(keys) == sorted(f.split(":", 1)[1] + ".png" for f in files)
    else:
        assert _files(out) == sorted(files)  # the manifest is the folder: every row's file, no other
        folder, = {Path(f).parent for f in files}
        assert len(folder.parts) == 1 and "/" not in folder.name and (out / folder).is_dir()
        stems = {Path(f).name.split("_x")[0] for f in files}
        assert len(stems) == 2 and all(s.startswith("case1-") for s in stems)  # a short hash of each path
        from napari_histodiff.core.data.tiles import TileFolder

        assert TileFolder(out, 64).class_names == ["Tumor/Positive"]  # read back with the QuPath name


def test_slide_names_hash_only_shared_names_and_stay_unique():
    from types import SimpleNamespace

    from napari_histodiff.core.jobs.tiles import class_folders, slide_names

    a, b, c, again = (SimpleNamespace(path=Path(p)) for p in ("/x/a/case.svs", "/x/b/case.svs", "/x/other.ome.tif",
                                                               "/x/other.ome.tif"))
    names = slide_names([a, b, c, again])
    assert names[id(c)] == "other" and names[id(again)] != "other"  # one slide given twice: still two names
    assert names[id(a)] != names[id(b)] and {names[id(a)][:5], names[id(b)][:5]} == {"case-"}
    assert slide_names([a, b]) == {id(a): names[id(a)], id(b): names[id(b)]}  # stable: from the path
    folders = class_folders(["..", "Tumor/Positive", "Dermis: Inflamed", "tumor/positive", "Tumör ✓"])
    assert len(set(folders.values())) == 5 and folders["Tumör ✓"] == "Tumör ✓"
    assert all("/" not in f and ":" not in f and f not in ("..", ".") for f in folders.values())


def test_slide_tiles_and_napari_layers_share_one_grid_and_one_labelling(slide):
    """Issue 27.8: one grid (TileGrid) and one labelling (label_cells) for SlideTiles and shape_tiles."""
    from shapely.geometry import Polygon, box

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.annotations import shape_tiles
    from napari_histodiff.core.data.geojson import AnnotationSet
    from napari_histodiff.core.data.slide_tiles import SlideSource

    anns = AnnotationSet([Annotation(Polygon([(500, 500), (1700, 620), (1300, 1540), (480, 1400)]), "Stroma"),
                          Annotation(box(1900, 1000, 2700, 2048), "Tumor"),
                          Annotation(box(1000, 900, 2100, 1300), "Necrosis")], "test")
    for kw in ({"mpp": 1.0}, {"mpp": 0.6, "stride": 40}, {"scale": 0.5}):
        cli = SlideTiles(slide, 64, annotations=anns, min_fraction=0.4, **kw)
        napari = run_to_end(shape_tiles(SlideSource(slide), anns, 64, kw.get("stride"), 0.4, kw.get("mpp"),
                                        scale=kw.get("scale")))
        assert len(cli) > 10 and cli.xy.tolist() == napari.xy.tolist() and cli.labels.tolist() == napari.labels.tolist()
        assert (cli.level, cli.read_size) == (napari.level, napari.read_size)
        np.testing.assert_allclose(cli.covered, napari.covered, atol=1e-6)
        assert all((cli[i] == napari[i]).all() for i in (0, len(cli) // 2, len(cli) - 1))


def test_one_rule_for_images_without_microns_per_pixel(tmp_path):
    """Issue 27.7: the CLI refused a slide without um/px while napari tiled it at full resolution."""
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.data.annotations import ArraySource, label_tiles, shapes_annotations, shape_tiles
    from napari_histodiff.core.data.slide_tiles import SlideSource, tile_factor

    with pytest.raises(HistodiffError) as rule:
        tile_factor("plain.tif", None, 0.5)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, slide_image(512, 512), photometric="rgb")
    from shapely.geometry import box

    anns = shapes_annotations([box(0, 0, 256, 256)], ["TUM"])
    image = slide_image(512, 512)
    attempts = [lambda: SlideTiles(plain, 64, mpp=0.5),  # the CLI's tile sets
                lambda: run_to_end(shape_tiles(SlideSource(plain), anns, 64, mpp=0.5)),  # napari, a slide layer
                lambda: run_to_end(shape_tiles(ArraySource(image, name="plain.tif"), anns, 64, mpp=0.5)),  # an image
                lambda: run_to_end(label_tiles(ArraySource(image, name="plain.tif"), np.ones((512, 512), np.uint8),
                                               {1: "TUM"}, 64, mpp=0.5))]
    for attempt in attempts:
        with pytest.raises(HistodiffError) as e:
            attempt()
        assert e.value.raw == rule.value.raw and "does not say its microns per pixel" in str(e.value)
    # the ways out: the image's resolution, a magnification, or no resolution asked for
    assert SlideTiles(plain, 64, mpp=0.5, slide_mpp=0.25, tissue_filter=False).read_size == 128
    assert len(run_to_end(shape_tiles(ArraySource(image, name="i"), anns, 64, scale=0.5))) == 4  # 128 px of the image per tile
    assert len(run_to_end(shape_tiles(ArraySource(image, name="i"), anns, 64))) == 16
