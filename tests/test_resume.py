"""Fine-tuning again, into new or finished folders; one accelerate state per job; the bundle's scheduler kept."""

import json
import shutil

import pytest

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.data.tiles import ArrayTiles
from napari_histodiff.core.formats.bundle import load_bundle
from napari_histodiff.core.jobs.finetune import FinetuneOptions, finetune

SHORT = dict(unet_steps=2, classifier_steps=3, selection_steps=3, device="cpu")


def events_and_result(gen):
    events = []
    return events, run_to_end(gen, events.append)


def renamed(tiles, names):
    return ArrayTiles(tiles.tiles, tiles.labels, names, description="the same tiles, other class names")


def test_each_job_gets_the_precision_it_asks_for():
    from napari_histodiff.core.train.loop import make_accelerator

    for precision in ("bf16", "no", "bf16", "no"):
        acc = make_accelerator("cpu", precision)
        assert acc.mixed_precision == precision and acc.device.type == "cpu"


def test_refinetuning_a_finetuned_bundle_gives_fresh_classes_and_a_chain(tmp_path, finetuned_bundle, labeled_tiles):
    source = tmp_path / "ft1"
    shutil.copytree(finetuned_bundle[0], source)
    meta = json.loads((source / "histodiff.json").read_text())
    pretrained = meta["provenance"]["pretrained_from"]
    # the source's stages were trained with the step counts this run asks for (selection: 3 steps x 5 folds)
    for stage, steps in (("finetune_unet", 2), ("latent_classifier", 3), ("selection_classifier", 15)):
        meta["provenance"][stage]["steps"] = steps
    (source / "histodiff.json").write_text(json.dumps(meta))
    tiles = renamed(labeled_tiles, ["brown", "blue"])
    out = tmp_path / "ft2"
    result = run_to_end(finetune(FinetuneOptions(model=source, out=out, **SHORT), tiles=tiles))
    assert "nothing to do" not in result["message"]
    bundle = load_bundle(out, device="cpu")
    assert bundle.class_names == ["brown", "blue"]
    assert bundle.latent_classifier is not None and bundle.selection_classifier is not None
    prov = bundle.meta["provenance"]
    assert prov["pretrained_from"] == pretrained and prov["finetuned_from"] == str(source.resolve())
    assert prov["earlier_finetunes"][0]["bundle"] == str(source.resolve())
    assert prov["latent_classifier"]["steps"] == 3 and prov["selection_classifier"]["steps"] == 15


def test_a_finished_folder_says_nothing_to_do_and_keeps_its_record(tmp_path, trained_bundle, labeled_tiles):
    out = tmp_path / "ft"
    run_to_end(finetune(FinetuneOptions(model=trained_bundle, out=out, **SHORT), tiles=labeled_tiles))
    record = (out / "histodiff.json").read_bytes()
    events, result = events_and_result(finetune(
        FinetuneOptions(model=trained_bundle, out=out, intent="resume", **SHORT), tiles=labeled_tiles))
    assert result["message"].startswith("nothing to do") and events == []
    from napari_histodiff.cli import render

    assert "choose --overwrite to train it again" in render(result["message"], FinetuneOptions)
    assert (out / "histodiff.json").read_bytes() == record
    # other options: refused, the record untouched
    with pytest.raises(HistodiffError, match=r"unet_learning_rate.*intent=overwrite"):
        run_to_end(finetune(FinetuneOptions(model=trained_bundle, out=out, intent="resume", unet_learning_rate=1e-3,
                                            **SHORT), tiles=labeled_tiles))
    with pytest.raises(HistodiffError, match="fine-tuned on classes"):
        run_to_end(finetune(FinetuneOptions(model=trained_bundle, out=out, intent="resume", **SHORT),
                            tiles=renamed(labeled_tiles, ["x", "y"])))
    assert (out / "histodiff.json").read_bytes() == record
    # more steps of one stage: only that stage trains, from where it stopped
    more = {**SHORT, "classifier_steps": 5}
    events, _ = events_and_result(finetune(
        FinetuneOptions(model=trained_bundle, out=out, intent="resume", **more), tiles=labeled_tiles))
    trained = {(e.stage, e.step) for e in events if e.stage not in ("warning", "finetune")}
    assert trained == {("latent_classifier", 4), ("latent_classifier", 5)}
    assert load_bundle(out, device="cpu").meta["provenance"]["latent_classifier"]["steps"] == 5


def test_finetuning_keeps_the_bundle_scheduler(tmp_path, trained_bundle, labeled_tiles):
    import numpy as np

    from napari_histodiff.core.formats.integrity import write_manifest

    source = tmp_path / "src"
    shutil.copytree(trained_bundle, source)
    cfg_file = source / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    n = cfg["num_train_timesteps"]
    cfg.update(trained_betas=np.linspace(1e-4, 0.03, n).tolist(), timestep_spacing="trailing")
    cfg_file.write_text(json.dumps(cfg))
    write_manifest(cfg_file.parent)  # as if the bundle had been written with this schedule
    out = tmp_path / "ft"
    run_to_end(finetune(FinetuneOptions(model=source, out=out, **SHORT), tiles=labeled_tiles))
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text()) == cfg
    assert load_bundle(out, device="cpu").scheduler.config.timestep_spacing == "trailing"


def test_interrupted_in_the_selection_stage_loads_and_resumes(tmp_path, trained_bundle, labeled_tiles):
    out = tmp_path / "ft"
    gen = finetune(FinetuneOptions(model=trained_bundle, out=out, **{**SHORT, "selection_steps": 50}),
                   tiles=labeled_tiles)
    for event in gen:
        if event.stage == "selection_classifier" and event.step == 2:
            gen.close()
            break
    bundle = load_bundle(out, device="cpu")
    assert bundle.latent_classifier is not None and bundle.selection_classifier is None
    run_to_end(finetune(FinetuneOptions(model=trained_bundle, out=out, intent="resume",
                                        **{**SHORT, "selection_steps": 50}), tiles=labeled_tiles))
    assert load_bundle(out, device="cpu").selection_classifier is not None
