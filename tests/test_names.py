"""Class names never become paths (issue 27, item 2): one function makes a safe, unique name; the
original name stays in records and manifests; paths read from CSV files stay inside their folder."""

import csv

import pytest

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.base.names import folder_names, inside, safe_name
from napari_histodiff.core.formats.records import RECORDS_FILE, read_records
from napari_histodiff.core.generate.export import MANIFEST, ExportOptions, export_set, read_export
from napari_histodiff.core.generate.sample_set import write_samples
from test_outputs import sample_folder, sample_opts, tiny_bundle

NAMES = ["..", "Tumor/Positive", "Tumör ✓", "Dermis: Inflamed", "CON", "tumor", "Tumor"]
WINDOWS_BAD = set('<>:"/\\|?*')


def test_safe_names_are_valid_everywhere_unique_and_keep_safe_unicode():
    names = folder_names(NAMES)
    assert names["Tumör ✓"] == "Tumör ✓" and names["tumor"] == "tumor"
    assert len({n.casefold() for n in names.values()}) == len(NAMES)  # unique without case, as on macOS
    for original, name in names.items():
        assert name not in (".", "..") and not WINDOWS_BAD & set(name), (original, name)
        assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL"} and not name.endswith((".", " "))
    assert safe_name("a/b") != safe_name("a:b")  # different names never meet
    assert folder_names(NAMES) == names  # the same names give the same folders


def test_inside_refuses_paths_that_leave_the_folder(tmp_path):
    assert inside(tmp_path, "TUM/x.tif") == tmp_path / "TUM" / "x.tif"
    for bad in ("../x.tif", "TUM/../../x.tif", "/etc/passwd", ""):
        with pytest.raises(HistodiffError, match="outside"):
            inside(tmp_path, bad, "samples.csv")


@pytest.fixture(scope="module")
def named_samples(tmp_path_factory):
    bundle = tiny_bundle()
    classes = ["..", "Tumor/Positive", "Tumör ✓"]
    bundle.meta["class_names"] = classes
    out = tmp_path_factory.mktemp("named") / "s"
    run_to_end(write_samples(bundle, sample_opts(out, classes=classes, n=1), out))
    return out, classes


def test_sampling_writes_every_class_inside_its_folder(named_samples):
    out, classes = named_samples
    records = read_records(out)
    assert [r.target_class for r in records] == classes  # the names as the user gave them
    for r in records:
        path = (out / r.file).resolve()
        assert out.resolve() in path.parents and path.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["s"]  # nothing written beside the folder


def test_export_keeps_class_names_in_the_manifest_and_files_inside(named_samples, tmp_path):
    samples, classes = named_samples
    out = tmp_path / "set"
    run_to_end(export_set([samples], out, ExportOptions(only_kept=False)))
    tiles, rows = read_export(out)
    assert sorted(r["class"] for r in rows) == sorted(classes) and tiles.shape[0] == 3
    for r in rows:
        assert out.resolve() in (out / r["file"]).resolve().parents
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def _rewrite(path, change):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0])
    change(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_export_refuses_a_tile_path_outside_the_sample_folder(tmp_path):
    samples = tmp_path / "samples"
    sample_folder(samples, "TUM")
    _rewrite(samples / RECORDS_FILE, lambda r: r.update(file="../../escaped.tif"))
    with pytest.raises(HistodiffError, match=r"samples\.csv.*outside"):
        run_to_end(export_set([samples], tmp_path / "set"))
    assert not (tmp_path / "set").exists()


def test_an_id_that_looks_like_a_path_stays_a_name(tmp_path):
    samples = tmp_path / "samples"
    sample_folder(samples, "TUM")
    _rewrite(samples / RECORDS_FILE, lambda r: r.update(id="../../../escaped"))
    out = tmp_path / "deep" / "set"
    run_to_end(export_set([samples], out))
    tiles, rows = read_export(out)
    assert "../../../escaped" in [r["id"] for r in rows] and tiles.shape[0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "samples"]
    assert all(out.resolve() in (out / r["file"]).resolve().parents for r in rows)


def test_a_manifest_naming_a_file_outside_is_refused(tmp_path):
    samples = tmp_path / "samples"
    sample_folder(samples, "TUM")
    out = tmp_path / "set"
    run_to_end(export_set([samples], out))
    (tmp_path / "secret.tif").write_bytes(b"x")
    _rewrite(out / MANIFEST, lambda r: r.update(file="../secret.tif"))
    with pytest.raises(HistodiffError, match="outside"):
        read_export(out)
    other = tmp_path / "more"
    sample_folder(other, "STR", seed=3)
    with pytest.raises(HistodiffError):  # the edited manifest is refused, whatever the check that sees it first
        run_to_end(export_set([other], out, ExportOptions(intent="append")))
    assert (tmp_path / "secret.tif").read_bytes() == b"x"
