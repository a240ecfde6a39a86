"""The verdict after fine-tuning (core.evaluate.verdict) on constructed metrics."""

from napari_histodiff.core.evaluate.verdict import FEW_TILES, from_meta, from_result, verdict

NAMES = ["Tumor", "Stroma", "Necrosis"]
MANY = {"Tumor": 40, "Stroma": 40, "Necrosis": 40}


def test_a_clean_confusion_with_enough_tiles_is_good_enough_to_sample():
    v = verdict(NAMES, MANY, [[10, 0, 0], [1, 9, 0], [0, 0, 10]], steering_accuracy=0.8)
    assert v.ready
    assert v.headline == "Good enough to sample."
    assert v.actions == []
    assert "the tile checker recognises 97% of held-out tiles" in v.details[0]
    assert "Stroma: 9 of 10 held-out tiles recognised (90%); 1 taken for Tumor" in v.details


def test_two_confused_classes_are_named_with_what_to_do():
    v = verdict(NAMES, MANY, [[6, 4, 0], [3, 7, 0], [0, 0, 10]], steering_accuracy=0.7)
    assert not v.ready
    assert v.headline.startswith("Not good enough yet: classes Tumor and Stroma are confused (40% of the held-out "
                                 "Tumor tiles were taken for Stroma): add tiles of them")
    assert v.actions == []  # the pair is named once, not once per direction
    assert "Necrosis" not in v.headline


def test_too_few_tiles_of_a_class_is_advice_on_a_good_model():
    v = verdict(NAMES, {**MANY, "Necrosis": 6}, [[10, 0, 0], [0, 10, 0], [0, 0, 3]], steering_accuracy=0.9)
    assert v.ready
    assert f"too few tiles of Necrosis (6): annotate at least {FEW_TILES - 6} more" in v.actions
    assert "small classes" in v.headline


def test_a_class_spread_over_others_is_weak_and_steering_near_chance_blocks():
    confusion = [[10, 0, 0], [0, 10, 0], [2, 1, 1]]  # Necrosis: 2 of 4 taken for Tumor
    v = verdict(NAMES, MANY, confusion, steering_accuracy=0.40)
    assert not v.ready
    text = v.text()
    assert "classes Necrosis and Tumor are confused" in text
    assert "sampling will barely steer" in text and "chance is 33%" in text
    weak = verdict(["A", "B", "C", "D", "E"], None,
                   [[10, 0, 0, 0, 0], [0, 10, 0, 0, 0], [0, 0, 10, 0, 0], [0, 0, 0, 10, 0], [1, 1, 1, 1, 1]])
    assert weak.actions == [] and weak.headline == ("Not good enough yet: class E is often not recognised (20% of "
                                                    "its held-out tiles): add tiles of E.")


def test_low_accuracy_without_confusion_still_blocks_and_no_figures_cannot_be_judged():
    assert not verdict(NAMES, MANY, checker_accuracy=0.5).ready
    v = verdict(NAMES, MANY)
    assert not v.ready and "cannot be judged" in v.headline
    assert not verdict(["Tumor"], {"Tumor": 50}).ready


def test_from_a_job_result_and_from_a_bundle_meta_agree():
    result = {"class_counts": MANY,
              "latent_classifier": {"history": [[10, {"acc_t0": 0.9, "acc_t500": 0.6}]]},
              "selection_classifier": {"best_heldout_acc": 0.6, "confusion": [[5, 5, 0], [5, 5, 0], [0, 0, 10]]}}
    v = from_result(result, NAMES)
    meta = {"class_names": NAMES, "class_counts": MANY,
            "metrics": {"latent_classifier": {"acc_t0": 0.9}, "selection_classifier": {"heldout_acc": 0.5}},
            "provenance": {"selection_classifier": {"best_heldout_acc": 0.6,
                                                    "confusion": [[5, 5, 0], [5, 5, 0], [0, 0, 10]]}}}
    assert from_meta(meta) == v
    assert not v.ready and "Tumor and Stroma" in v.headline
    assert "the tile checker recognises 60% of held-out tiles" in v.text(details=True)
    assert "Figures:" not in v.text()
