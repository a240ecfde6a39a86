import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the widgets' jobs on worker threads (tests monkeypatch them); tests/test_process_jobs.py runs them in
# spawned processes, as napari users get them
os.environ.setdefault("HISTODIFF_JOBS", "thread")


@pytest.fixture(autouse=True)
def _job_logs(tmp_path_factory, monkeypatch):
    """Job logs of the tests' spawned jobs go to a temporary folder, not ~/histodiff/logs."""
    monkeypatch.setenv("HISTODIFF_LOG_DIR", str(tmp_path_factory.getbasetemp() / "job-logs"))


@pytest.fixture(autouse=True)
def _own_settings(tmp_path_factory, monkeypatch):
    """Each test its own panel settings (widgets/settings.py), and closing a panel stops its jobs without
    asking (tests/test_dock.py asks)."""
    monkeypatch.setenv("HISTODIFF_CONFIG", str(tmp_path_factory.mktemp("config")))
    monkeypatch.setenv("HISTODIFF_ON_CLOSE", "stop")


@pytest.fixture(autouse=True)
def _own_locks(tmp_path_factory, monkeypatch):
    """Each test its own folder locks and job registry (core/base/lock.py, threads.py): no test waits for,
    or shares cores with, jobs of another test or of other programs on this machine."""
    monkeypatch.setenv("HISTODIFF_LOCKS", str(tmp_path_factory.mktemp("locks")))
    # the record of verified weights (core/formats/integrity.py) goes to the session's temporary folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only when selected (``pytest -m slow``)."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def shared_data() -> Path:
    env = os.environ.get("HISTODIFF_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def ihc_tiles():
    """Real tissue tiles (32 px) cut from the colon image that scikit-image ships."""
    from napari_histodiff.core.jobs.demo import demo_tiles

    return demo_tiles(32)


@pytest.fixture()
def fast_preset():
    """The tiny preset with the GAN switched on early, so short runs exercise every loss term."""
    from napari_histodiff.core.models.presets import tiny

    p = tiny()
    p.autoencoder.disc_start = 4
    p.diffusion.warmup_steps = 5
    return p


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, ihc_tiles):
    """A tiny bundle trained briefly (shared by sampling, bundle and CLI tests)."""
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder
    from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion

    out = tmp_path_factory.mktemp("bundle") / "b"
    preset = tiny()
    run_to_end(train_autoencoder(ihc_tiles, out, preset, AutoencoderOptions(steps=60, device="cpu")))
    run_to_end(train_diffusion(ihc_tiles, out, preset, DiffusionOptions(steps=60, device="cpu")))
    return out


@pytest.fixture(scope="session")
def labeled_tiles():
    """Real tiles of two visually distinct classes (DAB-rich vs hematoxylin-rich) from the demo image."""
    from napari_histodiff.core.jobs.demo import demo_labeled_tiles

    return demo_labeled_tiles(32)


@pytest.fixture(scope="session")
def finetuned_bundle(tmp_path_factory, ihc_tiles, labeled_tiles):
    """A tiny bundle pre-trained on the demo image and fine-tuned on its two stain classes."""
    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.train.finetune import FinetuneOptions, finetune
    from napari_histodiff.core.models.presets import tiny
    from napari_histodiff.core.train.autoencoder import AutoencoderOptions, train_autoencoder
    from napari_histodiff.core.train.diffusion import DiffusionOptions, train_diffusion

    root = tmp_path_factory.mktemp("finetuned")
    pre, out = root / "pre", root / "ft"
    preset = tiny()
    run_to_end(train_autoencoder(ihc_tiles, pre, preset, AutoencoderOptions(steps=200, device="cpu")))
    run_to_end(train_diffusion(ihc_tiles, pre, preset, DiffusionOptions(steps=400, device="cpu")))
    result = run_to_end(finetune(pre, labeled_tiles, out, preset, FinetuneOptions(
        classifier_steps=400, selection_steps=150, unet_steps=20, device="cpu")))
    return out, result


@pytest.fixture(scope="session")
def generated_compvis(tmp_path_factory):
    """CompVis checkpoints made here with random weights (tests/compvis_sets.py): public, public_full
    and malicious.ckpt, as in ../shared/fixtures/compvis, so those tests run without ../shared."""
    from compvis_sets import make_compvis_fixtures

    return make_compvis_fixtures(tmp_path_factory.mktemp("compvis"))


@pytest.fixture(scope="module", params=["shared", "generated"])
def compvis(request):
    """The path of a CompVis test file by name, from ../shared/fixtures/compvis (HISTODIFF_SHARED_FIXTURES;
    skipped where absent) and from the set generated here (always)."""
    if request.param == "shared":
        env = os.environ.get("HISTODIFF_SHARED_FIXTURES")
        base = (Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "fixtures") / "compvis"
    else:
        base = request.getfixturevalue("generated_compvis")

    def path(name: str) -> Path:
        found = base / name
        if not found.is_file():
            pytest.skip(f"fixture {found} not available")
        return found

    return path
