"""No half-made bundle (issue 31, item 3): a fine-tuning that fails leaves a resumable checkpoint or
nothing, and ``histodiff info`` says when a bundle lacks a part."""

import shutil

import pytest

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.base.events import run_to_end
from napari_histodiff.core.formats.bundle import describe, missing_parts, read_meta
from napari_histodiff.core.jobs.finetune import FinetuneOptions, finetune
from napari_histodiff.core.train import classifiers


def opts(out, model, **kw):
    return FinetuneOptions(model=model, out=out, classifier_steps=3, selection_steps=3, unet_steps=0,
                           selection_folds=1, device="cpu", **kw)


def test_a_fine_tuning_that_fails_before_a_checkpoint_leaves_nothing(trained_bundle, labeled_tiles, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "ft"

    def broken(*args, **kwargs):
        raise RuntimeError("a fault in the first stage")
        yield

    monkeypatch.setattr(classifiers, "train_latent_classifier", broken)  # fine-tuning imports it when it runs
    with pytest.raises(RuntimeError, match="a fault"):
        run_to_end(finetune(opts(out, trained_bundle), tiles=labeled_tiles))
    assert not out.exists()  # the parts copied from the pre-trained model are not worth keeping
    monkeypatch.undo()
    run_to_end(finetune(opts(out, trained_bundle), tiles=labeled_tiles))  # the same command runs again
    assert missing_parts(out, read_meta(out)) == []


def test_info_names_the_missing_part_of_a_bundle(finetuned_bundle, tmp_path):
    src, _ = finetuned_bundle
    out = tmp_path / "ft"
    shutil.copytree(src, out)
    text, problems = describe(out, verify=False)
    assert "status      complete" in text
    shutil.rmtree(out / "selection_classifier")
    text, _ = describe(out, verify=False)
    assert "INCOMPLETE: no selection_classifier/" in text and "--resume" in text
    assert missing_parts(out, read_meta(out)) == ["selection_classifier"]


def test_a_bundle_folder_with_only_our_record_can_be_written_again(trained_bundle, labeled_tiles, tmp_path):
    from napari_histodiff.core.base.outdir import prepare_output

    out = tmp_path / "ft"
    prepare_output(out, "bundle", "new", allowed=("new", "resume", "overwrite"))  # a run that stopped at once
    with pytest.raises(HistodiffError, match="intent must be"):
        prepare_output(out, "bundle", "append", allowed=("new", "resume", "overwrite"))
    run_to_end(finetune(opts(out, trained_bundle), tiles=labeled_tiles))
    assert (out / "selection_classifier").is_dir()
