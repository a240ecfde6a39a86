"""The jobs users run (pretrain, finetune, sample, select, export, convert, evaluate, audit, demo): options and one function each.

Every job is ``function(options, ...)``: a generator that validates all its options and inputs before it
touches the disk, yields :class:`~napari_histodiff.core.base.events.Progress` and returns a dict with a
``message``. The CLI and the napari widgets call these; ``JOBS`` lists them for the CLI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Job:
    name: str  # the CLI command
    options: str  # "module:OptionsClass" inside this package
    function: str  # "module:function"
    help: str  # one line for the command list
    interrupted: str = ""  # what the CLI says after Ctrl-C

    def _load(self, ref: str):
        module, name = ref.split(":")
        return getattr(import_module(f"{__name__}.{module}"), name)

    def options_class(self):
        return self._load(self.options)

    def run(self, opts, **inputs):
        """The job's progress generator; out of memory becomes one plain error (``base.memory``)."""
        from ..base.guard import guarded

        return guarded(self._load(self.function)(opts, **inputs), opts, f"histodiff {self.name}")


RESUME = "a checkpoint was saved; continue with --resume"
JOBS = [
    Job("tiles", "tiles:TilesOptions", "tiles:tiles",
        "cut whole-slide images (with QuPath annotations) into tiles at a chosen resolution", "nothing was written"),
    Job("pretrain-autoencoder", "pretrain:PretrainAutoencoderOptions", "pretrain:pretrain_autoencoder",
        "train the KL autoencoder on unlabeled tiles", RESUME),
    Job("pretrain", "pretrain:PretrainOptions", "pretrain:pretrain",
        "train the latent diffusion model (and the autoencoder first)", RESUME),
    Job("finetune", "finetune:FinetuneOptions", "finetune:finetune",
        "fine-tune a model on labeled tiles (classifiers, UNet)", RESUME),
    Job("sample", "sample:SampleOptions", "sample:sample",
        "sample tiles, unguided or guided toward classes, and select", "nothing was written"),
    Job("select", "sample:SelectOptions", "sample:select",
        "score and select the tiles of a sample folder again", "samples.csv was left as it was"),
    Job("export", "export:ExportOptions", "export:export",
        "export kept tiles as an ImageFolder-style augmentation set", "nothing was written"),
    Job("info", "convert:InfoOptions", "convert:info",
        "print a readable summary of a bundle (or of a foreign checkpoint, converted)"),
    Job("convert", "convert:ConvertOptions", "convert:convert",
        "convert a CompVis .ckpt or a diffusers LDM folder into a bundle"),
    Job("demo", "demo:DemoOptions", "demo:demo",
        "run the whole method on an embedded default image", "run the demo again to continue where it stopped"),
    Job("evaluate", "evaluate:EvaluateOptions", "evaluate:evaluate",
        "does the augmentation help? train downstream classifiers and compare", "nothing was written"),
    Job("audit", "audit:AuditOptions", "audit:audit",
        "are synthetic tiles near-copies of real ones? nearest real tiles and a calibrated flag", "nothing was written"),
]
