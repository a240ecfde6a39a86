"""Export leaves near-copies out (issue 28, item 2): an audit's flags decide, the manifest records each
tile's result, and an option keeps them."""

from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.formats.audit import write_audit
from napari_histodiff.core.formats.records import read_records
from napari_histodiff.core.generate.export import ExportOptions, export_set, read_export
from test_outputs import sample_folder


def audited(tmp_path):
    samples = tmp_path / "samples"
    sample_folder(samples, "TUM", n=3)
    records = read_records(samples)
    rows = [{"tile": str(samples / r.file), "class": "TUM", "nearest_real": f"real/{i}.png",
             "similarity": 0.99 if i == 1 else 0.4, "near_copy": i == 1, "feature_similarity": 0.5,
             "source_folder": str(samples), "file": r.file} for i, r in enumerate(records)]
    (tmp_path / "audit").mkdir()
    write_audit(tmp_path / "audit", rows, {"threshold": 0.9}, 1)
    return samples, records[1].id


def test_near_copies_are_left_out_and_recorded(tmp_path):
    samples, copy_id = audited(tmp_path)
    events = []
    summary = run_to_end(export_set([samples], tmp_path / "set", ExportOptions(audit=[tmp_path / "audit"])),
                         on_event=events.append)
    _, rows = read_export(tmp_path / "set")
    assert sorted(r["id"] for r in rows) == ["TUM_00000", "TUM_00002"] and copy_id == "TUM_00001"
    assert all(r["near_copy"] is False for r in rows) and {r["similarity"] for r in rows} == {0.4}
    assert summary["total"] == 2
    assert any("1 near-copy of real tiles left out" in e.message for e in events if e.stage == "warning")


def test_keep_near_copies_exports_them_flagged(tmp_path):
    samples, copy_id = audited(tmp_path)
    run_to_end(export_set([samples], tmp_path / "set", ExportOptions(audit=[tmp_path / "audit"],
                                                                    keep_near_copies=True)))
    _, rows = read_export(tmp_path / "set")
    flagged = {r["id"]: r["near_copy"] for r in rows}
    assert flagged == {"TUM_00000": False, copy_id: True, "TUM_00002": False}


def test_without_an_audit_export_says_so(tmp_path, capsys):
    from napari_histodiff.cli import main

    samples = tmp_path / "samples"
    sample_folder(samples, "TUM", n=2)
    assert main(["export", str(samples), "--out", str(tmp_path / "set")]) == 0
    out = capsys.readouterr().out
    assert "not audited: near-copies" in out and "--audit" in out
    _, rows = read_export(tmp_path / "set")
    assert [r["near_copy"] for r in rows] == [None, None]
