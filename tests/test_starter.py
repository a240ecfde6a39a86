"""The built-in starter model ``he-starter`` (issue 29, item 4): its recipe, the compact float16 copy, the
name in every job that opens a model, the Load tab's choice, and the real shipped model when there is one."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_histodiff.core.formats import starter as S

from test_cli import run
from test_cli_method import write_labeled

ROOT = Path(__file__).resolve().parents[1]
UNET = "unet/diffusion_pytorch_model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"
SHIPPED = Path(S.STARTERS["he-starter"])
FAST = ["--classifier-steps", 2, "--selection-steps", 2, "--finetune-unet-steps", 2, "--selection-folds", 1,
        "--batch-size", 2, "--device", "cpu"]


def fake_crc_mini(root: Path) -> Path:
    """A stand-in for ../shared/data (crc_mini/CLASS/*.png): 96 px crops of the demo image, two classes."""
    import imageio.v3 as iio
    import skimage.data

    img = skimage.data.immunohistochemistry()
    for k, name in enumerate(("TUM", "STR")):
        (root / "crc_mini" / name).mkdir(parents=True)
        for i in range(2):
            y, x = 96 * (2 * k + i), 96 * i
            iio.imwrite(root / "crc_mini" / name / f"{name}-{i}.png", img[y : y + 96, x : x + 96])
    return root


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """benchmarks/he_starter.py --profile tiny on a stand-in data folder: the trained bundle and its compact copy."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import he_starter
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    root = tmp_path_factory.mktemp("starter")
    data = fake_crc_mini(root / "data")
    out = he_starter.main(["--data", str(data), "--work", str(root / "work"), "--profile", "tiny"])
    return root / "work" / "bundle", out["compact"], out


@pytest.fixture()
def installed(recipe, tmp_path, monkeypatch):
    """he-starter installed as a copy of the tiny compact bundle; the working directory has no he-starter."""
    folder = tmp_path / "package" / "models" / "he_starter"
    shutil.copytree(recipe[1], folder)
    monkeypatch.setitem(S.STARTERS, "he-starter", folder)
    monkeypatch.chdir(tmp_path)
    return folder


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- (a) the recipe and the compact copy ----------------------------------------------------------

def test_the_recipe_writes_a_compact_float16_copy_with_attribution(recipe):
    bundle, compact, out = recipe
    meta = json.loads((compact / "histodiff.json").read_text())
    assert meta["starter"]["name"] == "he-starter" and meta["starter"]["licence"].startswith("CC BY 4.0")
    assert "10.5281/zenodo.1214456" in meta["starter"]["attribution"]
    assert meta["starter"]["recipe"]["profile"] == "tiny" and meta["starter"]["recipe"]["unet_steps"] == 3
    assert meta["storage"]["float_dtype"] == "float16" and meta["microns_per_pixel"] == 0.5
    assert str(bundle.parents[1]) not in json.dumps(meta)  # the data set's name, not this machine's paths
    assert (bundle / "training").is_dir() and not (compact / "training").exists()
    assert sorted(p.name for p in compact.iterdir() if p.is_dir()) == ["scheduler", "unet", "vae"]
    for name in (UNET, VAE):
        assert S.float_dtypes((compact / name).parent) == ["float16"]
        assert S.float_dtypes((bundle / name).parent) == ["float32"]
        assert (compact / name).stat().st_size < 0.55 * (bundle / name).stat().st_size
    assert out["megabytes"] == pytest.approx(sum(f.stat().st_size for f in compact.rglob("*") if f.is_file()) / 1e6)


def test_the_compact_copy_loads_as_float32_with_the_weights_rounded_to_float16(recipe):
    import torch

    from napari_histodiff.core.formats.bundle import load_bundle

    bundle, compact, _ = recipe
    full, small = load_bundle(bundle, device="cpu"), load_bundle(compact, device="cpu")
    assert small.scale_factor == full.scale_factor and small.tile_size == full.tile_size
    for part in ("vae", "unet"):
        a, b = getattr(full, part).state_dict(), getattr(small, part).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert b[key].dtype == torch.float32, key
            assert torch.equal(b[key], a[key].to(torch.float16).to(torch.float32)), key
        assert any(not torch.equal(a[k], b[k]) for k in a)  # rounded: not the float32 weights themselves


def test_the_compact_copy_records_new_checksums_and_a_damaged_file_is_refused(recipe, tmp_path, capsys):
    from napari_histodiff.core.base.errors import BundleError
    from napari_histodiff.core.formats.integrity import sha256_file, verify_bundle
    from napari_histodiff.core.jobs.sample import open_checked

    _, compact, _ = recipe
    assert verify_bundle(compact) == []
    recorded = json.loads((compact / "unet" / "files.json").read_text())
    assert recorded["diffusion_pytorch_model.safetensors"]["sha256"] == sha256_file(compact / UNET)
    broken = tmp_path / "broken"
    shutil.copytree(compact, broken)
    f = broken / UNET
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF  # tensor data, behind an intact header
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="is corrupt"):
        open_checked(broken, "cpu")
    code, out, err = run(capsys, "info", broken)
    assert code == 2 and "DAMAGED" in err and "diffusion_pytorch_model.safetensors" in err


def test_shrink_bundle_refuses_a_folder_it_does_not_own_and_a_bundle_without_unet(recipe, tmp_path):
    from napari_histodiff.core.base.errors import HistodiffError

    bundle, _, _ = recipe
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(HistodiffError, match="never replaced"):
        S.shrink_bundle(bundle, mine)
    assert (mine / "notes.txt").read_text() == "keep" and not (mine / "vae").exists()
    partial = tmp_path / "ae-only"
    shutil.copytree(bundle, partial, ignore=shutil.ignore_patterns("unet", "training", ".histodiff-owner.json"))
    with pytest.raises(HistodiffError, match="no unet/"):
        S.shrink_bundle(partial, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- (b) the name in the jobs ---------------------------------------------------------------------

def test_finetune_sample_and_info_take_the_name_and_leave_the_package_folder_unchanged(
        installed, labeled_tiles, tmp_path, capsys):
    before = snapshot(installed)
    labeled = write_labeled(tmp_path / "labeled", labeled_tiles)
    out = tmp_path / "ft"
    code, stdout, err = run(capsys, "finetune", "he-starter", "--labeled", labeled, "--out", out, *FAST)
    assert code == 0, err
    meta = json.loads((out / "histodiff.json").read_text())
    assert meta["class_names"] == ["DAB-rich", "hematoxylin-rich"]
    assert meta["provenance"]["pretrained_from"] == str(installed.resolve())
    assert meta["starter"]["name"] == "he-starter"  # the attribution travels with the derived model
    assert (out / "latent_classifier").is_dir() and (out / "selection_classifier").is_dir()
    assert S.float_dtypes(out / "unet") == ["float32"] and S.float_dtypes(out / "vae") == ["float16"]
    assert meta["storage"]["parts"] == ["vae"]  # the fine-tuned UNet is saved as float32
    code, stdout, err = run(capsys, "sample", "he-starter", "-n", 2, "--steps", 2, "--out", tmp_path / "s",
                            "--device", "cpu")
    assert code == 0, err
    assert len(list((tmp_path / "s" / "unguided").glob("*.tif"))) == 2
    code, stdout, err = run(capsys, "info", "he-starter")
    assert code == 0, err
    assert f"bundle      {installed}" in stdout
    assert "starter     he-starter:" in stdout and "licence     CC BY 4.0" in stdout
    assert "(stored as float16)" in stdout and "weights     verified" in stdout
    assert snapshot(installed) == before


@pytest.mark.parametrize("where", ["itself", "inside"])
def test_finetuning_never_writes_into_the_package_folder(installed, labeled_tiles, tmp_path, capsys, where):
    before = snapshot(installed)
    labeled = write_labeled(tmp_path / "labeled", labeled_tiles)
    out = installed if where == "itself" else installed / "ft"
    intent = ["--overwrite"] if where == "itself" else []
    code, _, err = run(capsys, "finetune", "he-starter", "--labeled", labeled, "--out", out, *intent, *FAST)
    assert code == 2 and "--out" in err, err
    assert snapshot(installed) == before and not (installed / "ft").exists()


def test_a_folder_of_that_name_here_comes_first(installed, tmp_path):
    assert S.resolve_model("he-starter") == installed
    (tmp_path / "he-starter").mkdir()
    assert S.resolve_model("he-starter") == "he-starter"
    assert S.resolve_model(Path("other")) == Path("other") and S.resolve_model(None) is None


# -- (c) a copy without the starter's weights -----------------------------------------------------

@pytest.mark.parametrize("argv", [["info", "he-starter"], ["sample", "he-starter", "-n", 1, "--out", "s"],
                                  ["finetune", "he-starter", "--labeled", "x", "--out", "ft"]])
def test_a_missing_starter_exits_2_naming_the_recipe(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setitem(S.STARTERS, "he-starter", tmp_path / "package" / "models" / "he_starter")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "built-in model he-starter is not installed" in err and "benchmarks/he_starter.py" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "s").exists() and not (tmp_path / "ft").exists()


# -- (d) the Load tab -----------------------------------------------------------------------------

def test_the_load_tab_lists_the_starter_and_loads_it(installed, make_napari_viewer, qtbot, monkeypatch):
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from napari_histodiff.widgets import load as L
    from napari_histodiff.widgets._state import MODEL

    MODEL.model = None
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-histodiff", "Load model")
    items = [w.builtin.itemData(i) for i in range(w.builtin.count())]
    assert items == [None, "he-starter"]
    assert "64 px H&E, colon" in w.builtin.itemText(1) and "CC BY 4.0" in w.builtin.toolTip()
    w.builtin.setCurrentIndex(1)
    w.path.value = "/somewhere/else"  # the built-in choice comes first
    w.device.setCurrentText("cpu")
    w.load()
    qtbot.waitUntil(lambda: MODEL.model is not None, timeout=60_000)
    try:
        assert MODEL.model.path == installed and MODEL.model.meta["starter"]["name"] == "he-starter"
        assert "he-starter (built in)" in w.card.text() and "under CC BY 4.0: Kather JN et al." in w.card.text()
    finally:
        MODEL.model = None
    shown = []
    monkeypatch.setattr(L, "notify_error", shown.append)
    monkeypatch.setitem(S.STARTERS, "he-starter", installed.parent / "absent")
    w.load()
    assert len(shown) == 1 and "benchmarks/he_starter.py" in str(shown[0]) and w.load_button.isEnabled()


# -- (e) the real shipped starter -----------------------------------------------------------------

def test_the_shipped_starter_is_small_attributed_and_fine_tunes(tmp_path, capsys, monkeypatch):
    from napari_histodiff.core.formats.bundle import load_bundle
    from napari_histodiff.core.jobs.demo import demo_labeled_tiles

    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size <= 20e6, f"{size / 1e6:.1f} MB"
    meta = json.loads((SHIPPED / "histodiff.json").read_text())
    assert meta["tile_size"] == 64 and meta["microns_per_pixel"] == 0.5
    assert meta["starter"]["licence"].startswith("CC BY 4.0") and "Kather" in meta["starter"]["attribution"]
    assert all(meta["starter"].get(k) for k in ("name", "what", "data", "licence", "attribution", "recipe"))
    bundle = load_bundle(SHIPPED, device="cpu")
    assert {p.dtype for p in bundle.unet.parameters()} == {__import__("torch").float32}
    monkeypatch.chdir(tmp_path)
    tiles = demo_labeled_tiles(64)
    keep = np.concatenate([np.flatnonzero(tiles.labels == k)[:6] for k in (0, 1)])
    labeled = tmp_path / "labeled"
    import imageio.v3 as iio

    for i in keep:
        (labeled / tiles.class_names[tiles.labels[i]]).mkdir(parents=True, exist_ok=True)
        iio.imwrite(labeled / tiles.class_names[tiles.labels[i]] / f"t{i}.png", tiles.tiles[i])
    before = snapshot(SHIPPED)
    code, _, err = run(capsys, "finetune", "he-starter", "--labeled", labeled, "--out", tmp_path / "ft", *FAST)
    assert code == 0, err
    assert load_bundle(tmp_path / "ft", device="cpu").class_names == sorted(tiles.class_names)
    assert snapshot(SHIPPED) == before
