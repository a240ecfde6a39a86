"""Project promises: core never imports Qt/napari/magicgui; the npe2 manifest validates."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path


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
        "for m in pkgutil.walk_packages(c.__path__, 'napari_histodiff.core.'): importlib.import_module(m.name)\n"
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


# Which core subpackages each may import (lower layers never import higher ones; no cycles).
ALLOWED = {
    "base": set(),
    "models": {"base"},
    "data": {"base"},
    "formats": {"base", "models"},
    "train": {"base", "models", "data", "formats"},
    "generate": {"base", "models", "data", "formats"},
    "evaluate": {"base", "models", "data", "formats", "train"},
    "jobs": {"base", "models", "data", "formats", "train", "generate", "evaluate"},
}


def _core_imports(path: Path) -> set[str]:
    """Core subpackages a module imports (relative or absolute, at top level or inside functions)."""
    pkg = path.relative_to(SRC / "core").parts[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                target = pkg
            elif node.level == 2:
                target = (node.module or "").split(".")[0] or None
                if target is None:  # from .. import x
                    target = [a.name for a in node.names][0]
            elif node.level == 0 and (node.module or "").startswith("napari_histodiff.core."):
                target = node.module.split(".")[2]
            else:
                continue
            found.add(target)
    return found - {pkg}


def test_core_is_subpackages_with_one_line_docstrings():
    core = SRC / "core"
    assert sorted(p.name for p in core.glob("*.py")) == ["__init__.py"], "core modules belong in subpackages"
    packages = sorted(p.name for p in core.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert packages == sorted(ALLOWED)
    for name in packages:
        doc = ast.get_docstring(ast.parse((core / name / "__init__.py").read_text()))
        assert doc and doc.splitlines()[0].endswith("."), name


def test_core_subpackages_import_only_downwards():
    bad = []
    for f in (SRC / "core").rglob("*.py"):
        parts = f.relative_to(SRC / "core").parts
        if len(parts) < 2:
            continue
        bad += [f"{'/'.join(parts)} imports core.{t}" for t in _core_imports(f) if t not in ALLOWED[parts[0]]]
    assert not bad, bad


def test_importing_the_cli_loads_no_gui_package():
    code = (
        "import sys, napari_histodiff.cli as c\n"
        "c.build_parser()\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_does_not_load_torch():
    code = ("import sys, napari_histodiff.cli as c\nc.build_parser()\n"
            "print(sorted(n for n in ('torch', 'diffusers', 'scipy', 'skimage') if n in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
