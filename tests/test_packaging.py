"""The package as the napari hub and a packager see it: declared dependencies, licence, URLs, README
images, version floors, tox environments and what the sdist carries."""

import ast
import configparser
import importlib.metadata as metadata
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
REPO = "https://github.com/napari-histodiff/napari-histodiff"
RAW = "https://raw.githubusercontent.com/napari-histodiff/napari-histodiff/main/"

# the first torch release with each torch.serialization function the package calls
TORCH_SERIALIZATION = {
    "add_safe_globals": (2, 4),
    # (class, "module.name") pairs, used to register stand-ins under Lightning's names, came with 2.6
    "safe_globals": (2, 6),
    "get_unsafe_globals_in_checkpoint": (2, 6),
}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _spec(requirement: str) -> list[tuple[str, tuple]]:
    """[(operator, release)] of a requirement such as ``diffusers>=0.33,<0.43``."""
    spec = requirement[len(_name(requirement)):].split(";")[0]
    spec = re.sub(r"^\[[^]]*\]", "", spec.strip())
    return [(op, _release(v)) for op, v in re.findall(r"(>=|<=|==|<|>|~=|!=)\s*([\w.]+)", spec)]


def _release(version: str) -> tuple:
    return tuple(int(p) for p in re.match(r"\d+(\.\d+)*", version).group(0).split("."))


def _satisfies(version: str, spec) -> bool:
    v = _release(version)
    checks = {">=": v.__ge__, "<": v.__lt__, "<=": v.__le__, ">": v.__gt__, "!=": v.__ne__,
              "==": lambda r: v[:len(r)] == r}
    return all(checks[op](r) for op, r in spec)


def _declared(*extras: str) -> dict[str, str]:
    reqs = list(PROJECT["dependencies"])
    for extra in extras:
        reqs += PROJECT["optional-dependencies"][extra]
    return {_canonical(_name(r)): r for r in reqs}


def _imports(folder: Path) -> dict[str, set[str]]:
    """Top-level modules imported anywhere in folder's .py files (lazy imports included), except those
    imported inside a ``try`` that handles ImportError (optional): {module: {files}}."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        optional = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers):
                optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def _undeclared(folder: Path, declared: dict[str, str], local: set[str]) -> list[str]:
    dists = metadata.packages_distributions()
    problems = []
    for module, files in sorted(_imports(folder).items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        names = {_canonical(d) for d in dists.get(module, [])}
        if not names:
            problems.append(f"{module} (imported by {sorted(files)[0]}) is not installed, so not declared")
        elif not names & set(declared):
            problems.append(f"{module} (from {sorted(names)}, imported by {sorted(files)[0]}) is not declared")
    return problems


def test_every_module_the_package_imports_is_declared():
    # napari is the host: the plugin's napari modules need it from the `all` extra, not from the base install
    problems = _undeclared(ROOT / "src" / "napari_histodiff", _declared("all"), {"napari_histodiff"})
    assert not problems, "\n".join(problems)


def test_every_module_the_tests_import_is_declared_for_testing():
    # the tests' own helpers, and the project's scripts some tests import (docs/cli_reference.py)
    local = {p.stem for folder in ("tests", "docs", "benchmarks") for p in (ROOT / folder).glob("*.py")}
    local.add("napari_histodiff")
    problems = _undeclared(ROOT / "tests", _declared("testing"), local)
    assert not problems, "\n".join(problems)


def test_the_import_scan_finds_lazy_imports_and_skips_optional_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "m.py").write_text("def f():\n    import yaml\n\ntry:\n    import faiss\nexcept ImportError:\n"
                                   "    faiss = None\nfrom PIL import Image\n")
    assert set(_imports(tmp_path)) == {"yaml", "PIL"}
    assert _undeclared(tmp_path, {"numpy": "numpy"}, set()) == [
        "PIL (from ['pillow'], imported by m.py) is not declared",
        "yaml (from ['pyyaml'], imported by m.py) is not declared"]
    assert _undeclared(tmp_path, {"pillow": "Pillow", "pyyaml": "PyYAML"}, set()) == []


def test_installed_versions_meet_the_declared_bounds():
    """The suite runs on versions inside the declared bounds, so an upper bound names a tested version."""
    outside = []
    for key, req in _declared().items():
        try:
            version = metadata.version(key)
        except metadata.PackageNotFoundError:
            outside.append(f"{req}: not installed")
            continue
        if not _satisfies(version, _spec(req)):
            outside.append(f"{req}: {version} installed")
    assert not outside, outside


def test_torch_floor_covers_the_serialization_functions_used():
    used = set()
    for path in (ROOT / "src").rglob("*.py"):
        used |= set(re.findall(r"torch\.serialization\.(\w+)", path.read_text(encoding="utf-8")))
    assert used, "expected torch.serialization calls in the checkpoint import"
    unknown = used - set(TORCH_SERIALIZATION)
    assert not unknown, f"add the torch version that introduced {sorted(unknown)} to TORCH_SERIALIZATION"
    needed = max(TORCH_SERIALIZATION[name] for name in used)
    (floor,) = [r for op, r in _spec(_declared()["torch"]) if op == ">="]
    assert floor >= needed, f"torch>={'.'.join(map(str, floor))} declared, {needed} needed for {sorted(used)}"


def test_diffusers_is_bounded_on_both_sides():
    """core/models/unet.py passes UNet2DModel's full argument list (mid_block_type: diffusers 0.33) and
    sets attention internals (heads, scale) that are not public API: an upper bound stops an untested
    release from changing them under users."""
    spec = dict(_spec(_declared()["diffusers"]))
    assert spec[">="] >= (0, 33) and "<" in spec
    assert _satisfies(metadata.version("diffusers"), list(spec.items()))


def test_licence_file_and_metadata_agree():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "Neither the name of the copyright holder" in text
    assert PROJECT["license"] == "BSD-3-Clause" and PROJECT["license-files"] == ["LICENSE"]
    # a PEP 639 licence expression forbids licence classifiers, and needs setuptools >= 77
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]
    (setuptools,) = [r for r in PYPROJECT["build-system"]["requires"] if _name(r) == "setuptools"]
    assert any(op == ">=" and r >= (77,) for op, r in _spec(setuptools))


def test_project_urls():
    urls = PROJECT["urls"]
    assert set(urls) >= {"Homepage", "Documentation", "Source", "Issues"}
    assert urls["Source"] == urls["Homepage"] == REPO and urls["Issues"] == f"{REPO}/issues"
    doc = urls["Documentation"]
    assert doc.startswith(f"{REPO}/blob/main/") and (ROOT / doc.removeprefix(f"{REPO}/blob/main/")).is_file()


def test_readme_images_load_from_pypi_and_the_hub():
    """PyPI and the napari hub show the README without the repository: images need absolute URLs, and
    each must point at a file the repository has."""
    text = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^]]*\]\(([^)\s]+)", text) + re.findall(r"<img[^>]*src=\"([^\"]+)\"", text)
    assert images
    for url in images:
        assert url.startswith(RAW), f"{url}: use an absolute {RAW}... URL"
        assert (ROOT / url.removeprefix(RAW)).is_file(), url


def test_tox_installs_cpu_torch_on_every_python_listed():
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    envs = [e.strip() for e in tox["tox"]["envlist"].split(",")]
    pythons = {c.rsplit(" ", 1)[-1] for c in PROJECT["classifiers"] if re.fullmatch(r".*Python :: 3\.\d+", c)}
    assert {f"py{v.replace('.', '')}" for v in pythons} == {e for e in envs if re.fullmatch(r"py\d+", e)}
    deps = [d.strip() for d in tox["testenv"]["deps"].splitlines() if d.strip() and not d.strip().startswith("#")]
    assert deps == ["torch==2.13.0"]  # unconditional: every pyXY environment gets it
    assert {"build", "sdist"} <= set(envs)
    build, sdist = tox["testenv:build"]["commands"], tox["testenv:sdist"]["commands"]
    assert "python -m build" in build and "npe2\" validate napari-histodiff" in build and "-m venv" in build
    assert "--sdist" in sdist and "tar -xzf" in sdist and "pytest" in sdist and "[testing]" in sdist


def test_sdist_carries_licence_docs_and_tests(tmp_path):
    """The sdist built by the declared backend has what `tox -e sdist` runs the suite from."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))",
         str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    name = out.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as tar:
        top = name.removesuffix(".tar.gz")
        files = {m.name.removeprefix(top + "/") for m in tar.getmembers()}
        info = tar.extractfile(f"{top}/PKG-INFO").read().decode()
    tracked = subprocess.run(["git", "ls-files", "tests", "docs"], cwd=ROOT, capture_output=True, text=True)
    expected = {f for f in tracked.stdout.split() if (ROOT / f).is_file()} if tracked.returncode == 0 else set()
    expected |= {"LICENSE", "README.md", "napari.yaml", "pyproject.toml", "tests/conftest.py",
                 "tests/compvis_sets.py", "src/napari_histodiff/napari.yaml", "docs/images/napari_window.png"}
    assert not expected - files, sorted(expected - files)[:10]
    assert "License-Expression: BSD-3-Clause" in info and "License-File: LICENSE" in info
    assert f"Project-URL: Source, {REPO}" in info
    for req in ("scipy", "Pillow", "PyYAML", "filelock", "torch>=2.6"):
        assert re.search(rf"^Requires-Dist: {re.escape(req)}", info, re.M), req


def test_no_dependency_is_declared_twice():
    names = [_canonical(_name(r)) for r in PROJECT["dependencies"]]
    assert len(names) == len(set(names))
