"""`histodiff evaluate`: downstream classifiers on real vs real + augmentation tiles (tiny, generated data)."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from napari_histodiff.cli import main
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.evaluate.evaluate import (EvaluateOptions, evaluate, metrics, open_labeled, paired_difference,
                                            write_results)
from napari_histodiff.core.base.events import run_to_end

COLOURS = {"ADI": (230, 200, 200), "STR": (200, 80, 140), "TUM": (90, 60, 160)}


def make_tiles(root, n, seed, classes=COLOURS, size=16):
    """Per class: a distinct colour and texture (flat, horizontal stripes, checkerboard) plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    textures = [np.zeros((size, size)), ((yy // 2) % 2) * 60.0, (((yy // 2) + (xx // 2)) % 2) * 60.0]
    for k, (cls, colour) in enumerate(classes.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            tile = np.array(colour, float) - textures[k % 3][..., None] + rng.normal(0, 12, (size, size, 3))
            iio.imwrite(root / cls / f"{cls}_{i:03d}.png", np.clip(tile, 0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    aug = make_tiles(root / "augment", 6, seed=2)
    (aug / "manifest.csv").write_text("file,class,source\n")  # export folders carry non-image files
    return {"train": make_tiles(root / "train", 10, seed=0), "test": make_tiles(root / "test", 8, seed=1),
            "augment": aug}


OPTS = dict(steps=60, batch_size=16, eval_every=20, seeds=[0, 1], device="cpu")


@pytest.fixture(scope="module")
def results(data):
    return run_to_end(evaluate(open_labeled(data["train"], 16), open_labeled(data["test"], 16),
                               open_labeled(data["augment"], 16), EvaluateOptions(**OPTS)))


def test_both_arms_learn_the_easy_problem(results):
    assert results["classes"] == ["ADI", "STR", "TUM"]
    assert set(results["arms"]) == {"real", "augmented"}
    real = results["arms"]["real"]
    assert [r["seed"] for r in real["per_seed"]] == [0, 1]
    assert real["mean"]["accuracy"] > 0.8, real  # chance is 1/3
    for r in real["per_seed"]:
        cm = np.array(r["confusion"])
        assert cm.shape == (3, 3) and cm.sum() == 24 and (cm.sum(1) == 8).all()
        assert r["accuracy"] == pytest.approx(np.trace(cm) / 24)
        assert set(r["recall"]) == {"ADI", "STR", "TUM"}
    d = results["paired_difference"]
    assert d["ci95_low"] <= d["mean"] <= d["ci95_high"] and d["n"] == 2
    aug = results["arms"]["augmented"]["mean"]["accuracy"]
    assert d["mean"] == pytest.approx(100 * (aug - real["mean"]["accuracy"]))
    c = results["counts"]
    assert c["train"] == {"ADI": 10, "STR": 10, "TUM": 10} and c["augment"]["TUM"] == 6
    assert c["validation"] == {"ADI": 2, "STR": 2, "TUM": 2} and c["test"]["STR"] == 8


def test_results_files_round_trip(results, tmp_path):
    path = write_results(results, tmp_path / "out")
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    img = iio.imread(tmp_path / "out" / "results.png")
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and img.std() > 0
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_metrics_by_hand():
    m = metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["recall"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    # F1: a = 0.5, b = 0.8, c = 0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_paired_difference():
    d = paired_difference([0.5, 0.6, 0.7], [0.6, 0.65, 0.8])
    assert d["mean"] == pytest.approx(25 / 3)
    # t(0.975, 2) = 4.3027; sd of (10, 5, 10) = 2.8868
    assert d["ci95_high"] - d["mean"] == pytest.approx(4.3027 * 2.8868 / np.sqrt(3), rel=1e-3)
    one = paired_difference([0.5], [0.6])
    assert one["ci95_low"] == one["mean"] == one["ci95_high"] == pytest.approx(10) and "one seed" in one["note"]


def test_unknown_classes_are_refused(data, tmp_path):
    bad_test = make_tiles(tmp_path / "test", 2, seed=3, classes={"ADI": (1, 2, 3), "MUC": (9, 9, 9)})
    with pytest.raises(HistodiffError, match="MUC"):
        run_to_end(evaluate(open_labeled(data["train"], 16), open_labeled(bad_test, 16), None,
                            EvaluateOptions(**OPTS)))
    bad_aug = make_tiles(tmp_path / "aug", 2, seed=3, classes={"LYM": (1, 2, 3)})
    with pytest.raises(HistodiffError, match="LYM"):
        run_to_end(evaluate(open_labeled(data["train"], 16), open_labeled(data["test"], 16),
                            open_labeled(bad_aug, 16), EvaluateOptions(**OPTS)))


def test_bad_options():
    for bad in (dict(steps=0), dict(seeds=[]), dict(val_fraction=0.95), dict(learning_rate=0)):
        with pytest.raises(HistodiffError):
            EvaluateOptions(**bad).validate()


def test_cli(data, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--train", data["train"], "--test", data["test"], "--out", out, "--tile-size", "16",
            "--steps", "30", "--eval-every", "10", "--batch-size", "16", "--seeds", "0", "--device", "cpu"]
    code = main([str(a) for a in argv])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "real" in stdout and "accuracy" in stdout
    assert (out / "results.json").is_file() and (out / "results.png").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert "augmented" not in saved["arms"] and saved["options"]["channels"] == [32, 64, 128]
    code = main([str(a) for a in argv + ["--channels", "8", "16", "--overwrite"]])
    assert code == 0 and json.loads((out / "results.json").read_text())["options"]["channels"] == [8, 16]
    # an existing output is refused without --overwrite
    assert main([str(a) for a in argv]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # bad input: one line, exit 2
    code = main([str(a) for a in argv[:4] + [tmp_path / "missing"] + argv[5:] + ["--overwrite"]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing" in err


def test_empty_class_and_tile_size_mismatch():
    from napari_histodiff.core.data.tiles import ArrayTiles

    rng = np.random.default_rng(0)
    train = ArrayTiles(rng.integers(0, 255, (6, 16, 16, 3)), labels=[0, 0, 0, 1, 1, 1], class_names=["a", "b", "c"])
    test = ArrayTiles(rng.integers(0, 255, (2, 16, 16, 3)), labels=[0, 1], class_names=["a", "b"])
    with pytest.raises(HistodiffError, match="without tiles: c"):
        run_to_end(evaluate(train, test, None, EvaluateOptions(**OPTS)))
    train.class_names = ["a", "b"]
    big = ArrayTiles(rng.integers(0, 255, (2, 24, 24, 3)), labels=[1, 0], class_names=["a", "b"])
    with pytest.warns(UserWarning, match="resizing"):
        res = run_to_end(evaluate(train, big, None, EvaluateOptions(**{**OPTS, "steps": 4, "seeds": [0]})))
    assert res["counts"]["test"] == {"a": 1, "b": 1} and "paired_difference" not in res


def test_named_arms_run_per_seed_combine_to_the_joint_run(data, results):
    """Several augmentation arms against one real arm; runs of one seed each combine into exactly the
    two-seed run (training is deterministic per seed)."""
    from napari_histodiff.core.evaluate.evaluate import combine

    train, test = open_labeled(data["train"], 16), open_labeled(data["test"], 16)
    arms = {"augmented": open_labeled(data["augment"], 16), "other": open_labeled(data["train"], 16)}
    parts = [run_to_end(evaluate(train, test, arms, EvaluateOptions(**{**OPTS, "seeds": [s]}))) for s in (0, 1)]
    joint = combine(parts)
    assert list(joint["arms"]) == ["real", "augmented", "other"]
    assert joint["arms"]["real"] == results["arms"]["real"]
    assert joint["arms"]["augmented"] == results["arms"]["augmented"]
    assert joint["paired_difference"] == results["paired_difference"]
    assert set(joint["paired_differences"]) == {"augmented", "other"}
    assert joint["counts"]["augment"]["other"] == {"ADI": 10, "STR": 10, "TUM": 10}
    with pytest.raises(HistodiffError, match="seeds repeat"):
        combine([parts[0], parts[0]])
    with pytest.raises(HistodiffError, match="'real' names"):
        run_to_end(evaluate(train, test, {"real": arms["other"]}, EvaluateOptions(**OPTS)))


def test_frechet_distance():
    from napari_histodiff.core.evaluate.evaluate import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (4000, 3)), rng.normal(0, 1, (4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, b) < 0.02
    # shifted mean by (2, 0, 0) and scale 2 on every axis: ||mu||^2 + 3 * (1 + 4 - 2 * 2) = 4 + 3
    assert frechet_distance(a, 2 * b + [2, 0, 0]) == pytest.approx(7, rel=0.05)
    with pytest.raises(HistodiffError, match="at least 2"):
        frechet_distance(a[:1], b)


def test_small_vit_learns_the_easy_problem(data):
    res = run_to_end(evaluate(open_labeled(data["train"], 16), open_labeled(data["test"], 16), None,
                              EvaluateOptions(**{**OPTS, "seeds": [0], "arch": "vit", "steps": 80})))
    assert res["options"]["arch"] == "vit"
    assert res["arms"]["real"]["mean"]["accuracy"] > 0.8  # chance is 1/3
    with pytest.raises(HistodiffError, match="arch must be one of resnet, vit"):
        EvaluateOptions(arch="vgg").validate()
