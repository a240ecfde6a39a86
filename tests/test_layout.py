"""Project promises: core never imports Qt/napari/magicgui; the npe2 manifest validates."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_histodiff"
FORBIDDEN = ("qtpy", "napari", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy")


def test_core_source_never_imports_gui_packages():
    bad = []
    for f in (SRC / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{f.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not bad, bad


def test_importing_core_loads_no_gui_package():
    code = (
        "import sys, pkgutil, importlib, napari_histodiff.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('napari_histodiff.core.' + m.name)\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_manifest_validates_with_imports():
    npe2 = shutil.which("npe2") or str(Path(sys.executable).with_name("npe2"))
    r = subprocess.run([npe2, "validate", "napari-histodiff", "--imports"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid" in (r.stdout + r.stderr).lower()


def test_top_level_manifest_links_to_package_manifest():
    top = SRC.parents[1] / "napari.yaml"
    assert top.is_symlink() and top.resolve() == (SRC / "napari.yaml").resolve()


def test_sample_data_is_rgb_tissue():
    from napari_histodiff._sample_data import demo_tissue

    (data, meta, kind), = demo_tissue()
    assert data.shape == (512, 512, 3) and meta["rgb"] and kind == "image"
