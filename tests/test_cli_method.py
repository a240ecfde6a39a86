"""The method through the CLI: finetune -> sample (guided, selected) -> select -> export."""

import json

import numpy as np
import pytest

from test_cli import run


def write_labeled(root, labeled_tiles, counts=None):
    """Tile folders of the two real stain classes; ``counts`` maps folder name to tile count."""
    import imageio.v3 as iio

    counts = counts or {name: 6 for name in labeled_tiles.class_names}
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        idx = np.flatnonzero(labeled_tiles.labels == k % 2)[:n]
        for j in idx:
            iio.imwrite(root / name / f"t{j}.png", labeled_tiles.tiles[j])
    return root


@pytest.fixture(scope="module")
def cli_finetuned(tmp_path_factory, trained_bundle, labeled_tiles):
    from napari_histodiff.cli import main

    root = tmp_path_factory.mktemp("cli")
    data = write_labeled(root / "labeled", labeled_tiles)
    out = root / "ft"
    code = main(["finetune", str(trained_bundle), "--labeled", str(data), "--out", str(out),
                 "--classifier-steps", "6", "--selection-steps", "4", "--finetune-unet-steps", "2",
                 "--finetune-decoder-steps", "2", "--device", "cpu"])
    assert code == 0
    return out, data


def test_finetune_writes_classes_and_both_classifiers(cli_finetuned, capsys):
    out, _ = cli_finetuned
    meta = json.loads((out / "histodiff.json").read_text())
    assert meta["class_names"] == ["DAB-rich", "hematoxylin-rich"]
    assert meta["class_counts"] == {"DAB-rich": 6, "hematoxylin-rich": 6}
    for part in ("latent_classifier", "selection_classifier", "unet", "vae"):
        assert (out / part / "config.json").is_file()
    for stage in ("finetune_unet", "finetune_decoder", "latent_classifier", "selection_classifier"):
        assert stage in meta["provenance"]
    code, text, _ = run(capsys, "info", out)
    assert "DAB-rich, hematoxylin-rich" in text


def test_sample_select_export_round_trip(cli_finetuned, tmp_path, capsys):
    from napari_histodiff.core.generate.export import read_export
    from napari_histodiff.core.formats.records import read_records

    out, data = cli_finetuned
    s = tmp_path / "s"
    code, text, err = run(capsys, "sample", out, "--per-class", 3, "--steps", 5, "--out", s, "--device", "cpu",
                          "--rule", "none", "--cap", 2)
    assert code == 0, err
    records = read_records(s)
    assert len(records) == 6 and sum(r.kept for r in records) == 4 and "2/3 kept" in text
    code, text, err = run(capsys, "select", s, "--bundle", out, "--rule", "none", "--device", "cpu")
    assert code == 0 and sum(r.kept for r in read_records(s)) == 6
    e = tmp_path / "set"
    code, text, err = run(capsys, "export", s, "--out", e, "--include-real", data)
    assert code == 0, err
    tiles, rows = read_export(e)
    assert len(rows) == 6 + 12 and sum(r["source"] == "real" for r in rows) == 12
    import tifffile

    for row, tile in zip(rows, tiles):
        if row["source"] == "synthetic":
            rec = next(r for r in records if r.id == row["id"])
            assert np.array_equal(tile, tifffile.imread(s / rec.file))
    code, text, err = run(capsys, "export", s, "--out", e)
    assert code == 2 and "--overwrite" in err


def test_sample_variations_of_a_labeled_folder(cli_finetuned, tmp_path, capsys):
    from napari_histodiff.core.formats.records import read_records

    out, data = cli_finetuned
    s = tmp_path / "v"
    code, text, err = run(capsys, "sample", out, "--from", data, "--strength", 0.4, "--per-class", 3, "--steps", 10,
                          "--out", s, "--device", "cpu", "--rule", "none")
    assert code == 0, err
    records = read_records(s)
    assert [r.target_class for r in records] == ["DAB-rich"] * 3 + ["hematoxylin-rich"] * 3
    for r in records:
        assert r.strength == 0.4 and r.source_tile.endswith(".png")
        assert f"/{r.target_class}/" in r.source_tile.replace("\\", "/")


@pytest.mark.parametrize("argv, message", [
    (["sample", "{ft}", "--class", "TUM", "--out", "{tmp}/x"], "unknown class 'TUM'; this bundle knows DAB-rich"),
    (["sample", "{pre}", "--class", "A", "--out", "{tmp}/x"], "histodiff finetune"),
    (["sample", "{ft}", "-n", "0", "--out", "{tmp}/x"], "-n must be at least 1"),
    (["sample", "{ft}", "--guidance", "-2", "--per-class", "1", "--out", "{tmp}/x"], "--guidance must be at least 0"),
    (["sample", "{ft}", "--eta", "nan", "--out", "{tmp}/x"], "--eta must be a finite number, not nan"),
    (["sample", "{ft}", "--guidance", "inf", "--class", "A", "--out", "{tmp}/x"], "--guidance must be a finite number"),
    (["sample", "{ft}", "--steps", "5000", "--out", "{tmp}/x"], "1000 training timesteps"),
    (["finetune", "{pre}", "--labeled", "{tmp}/one", "--out", "{tmp}/o"], "at least 2 classes"),
    (["finetune", "{pre}", "--labeled", "{tmp}/few", "--out", "{tmp}/o"], "too few tiles for class B (2)"),
    (["finetune", "{pre}", "--labeled", "{tmp}/flat", "--out", "{tmp}/o"], "one sub-folder per class"),
    (["select", "{tmp}/nope", "--bundle", "{ft}"], "histodiff sample"),
    (["sample", "{ft}", "--strength", "0.5", "--out", "{tmp}/x"], "--strength below 1 makes variations of source tiles; give them with --sources"),
    (["sample", "{ft}", "--from", "{tmp}/few", "--per-class", "1", "--out", "{tmp}/x"], "unknown class 'A'"),
    (["sample", "{ft}", "--from", "{tmp}/one", "--strength", "1.5", "--out", "{tmp}/x"], "--strength must be at most 1"),
])
def test_bad_input_for_the_method_exits_2(cli_finetuned, trained_bundle, labeled_tiles, tmp_path, capsys,
                                           argv, message):
    import imageio.v3 as iio

    write_labeled(tmp_path / "one", labeled_tiles, {"A": 6})
    write_labeled(tmp_path / "few", labeled_tiles, {"A": 6, "B": 2})
    (tmp_path / "flat").mkdir()
    for i in range(3):
        iio.imwrite(tmp_path / "flat" / f"{i}.png", labeled_tiles.tiles[i])
    fmt = dict(ft=cli_finetuned[0], pre=trained_bundle, tmp=tmp_path)
    code, out, err = run(capsys, *[a.format(**fmt) for a in argv])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command, flags", [
    ("finetune", []), ("finetune", ["--overwrite"]), ("finetune", ["--resume"]),
    ("sample", []), ("sample", ["--overwrite"]),
    ("export", []), ("export", ["--overwrite"]), ("export", ["--append"]),
])
def test_a_users_folder_is_never_written_into(cli_finetuned, tmp_path, capsys, command, flags):
    ft, labeled = cli_finetuned
    user = tmp_path / "data"
    (user / "labelled").mkdir(parents=True)
    (user / "my_notes.txt").write_text("precious")
    (user / "labelled" / "tile.png").write_bytes(b"not really a png")
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    samples = tmp_path / "samples"
    assert run(capsys, "sample", ft, "-n", 2, "--steps", 2, "--out", samples, "--device", "cpu")[0] == 0
    argv = {"finetune": ["finetune", ft, "--labeled", labeled, "--classifier-steps", 2, "--selection-steps", 2],
            "sample": ["sample", ft, "-n", 2, "--steps", 2], "export": ["export", samples, "--all"]}[command]
    code, out, err = run(capsys, *argv, "--out", user, "--device", "cpu", *flags) if command != "export" else \
        run(capsys, *argv, "--out", user, *flags)
    assert code == 2 and "never replaced" in err and str(user) in err, err
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before
