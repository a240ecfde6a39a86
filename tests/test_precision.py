"""Precision: one option (auto | fp32 | bf16 | fp16) resolved in one place; bf16 sampling equals fp32 in quality."""

import numpy as np
import pytest
import torch

from napari_histodiff import load_bundle
from napari_histodiff.cli import build_options, build_parser
from napari_histodiff.core.base import precision as P
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.jobs import JOBS
from test_sampling import collect


def test_auto_is_bf16_for_sampling_on_cpus_with_bf16_and_fp32_for_cpu_training(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: True)
    assert P.resolve_precision("auto", torch.device("cpu"), "sample") == "bf16"
    assert P.resolve_precision("auto", "cpu", "train") == "fp32"
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: False)
    assert P.resolve_precision("auto", "cpu", "sample") == "fp32"
    assert P.resolve_precision("auto", "mps", "sample") == "fp32"


def test_auto_guides_in_fp32_on_cpus_while_the_unet_runs_bf16(monkeypatch, finetuned_bundle):
    # on CPUs the classifier's bf16 backward is slower than fp32 (docs/benchmarks.md); an explicit bf16 is kept
    from napari_histodiff.core.generate import sampling as S

    monkeypatch.setattr(P, "cpu_has_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu", "guidance") == "fp32"
    assert P.resolve_precision("bf16", "cpu", "guidance") == "bf16"
    seen, unet_dtypes = [], []
    grad = S.classifier_grad
    monkeypatch.setattr(S, "classifier_grad", lambda *a: seen.append(a[4]) or grad(*a))
    bundle = load_bundle(finetuned_bundle[0], device="cpu")
    hook = bundle.unet.conv_in.register_forward_hook(lambda m, i, o: unet_dtypes.append(o.dtype))
    try:
        tiles = collect(bundle, n=2, steps=3, seed=1, classes=["DAB-rich"], guidance=10.0)
    finally:
        hook.remove()
    assert tiles.shape[0] == 2
    assert seen == ["fp32"] * 3 and set(unet_dtypes) == {torch.bfloat16}
    seen.clear()
    collect(bundle, n=2, steps=3, seed=1, classes=["DAB-rich"], guidance=10.0, precision="bf16")
    assert seen == ["bf16"] * 3


def test_auto_on_cuda_follows_bf16_support(monkeypatch):
    for supported, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
        assert P.resolve_precision("auto", "cuda:0", "train") == want
        assert P.resolve_precision(None, torch.device("cuda", 0), "sample") == want
        assert P.resolve_precision("auto", "cuda", "guidance") == want


def test_explicit_choices_old_spelling_and_refusals():
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    assert P.resolve_precision("no", "cpu", "train") == "fp32"
    assert P.resolve_precision("bf16", "cpu", "train") == "bf16"
    assert P.resolve_precision("fp16", "cuda") == "fp16"
    with pytest.raises(HistodiffError, match="fp16 needs a CUDA GPU"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(HistodiffError, match="not one of"):
        P.resolve_precision("fp64", "cpu")
    assert [P.accelerate_precision(p) for p in ("fp32", "bf16", "fp16")] == ["no", "bf16", "fp16"]


def test_cpu_bf16_detection_reads_the_cpu_flags(monkeypatch):
    P.cpu_has_bf16.cache_clear()
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert P.cpu_has_bf16()
    P.cpu_has_bf16.cache_clear()
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx2", "fma"})
    assert not P.cpu_has_bf16()
    P.cpu_has_bf16.cache_clear()


@pytest.mark.parametrize("job", ["sample", "finetune", "pretrain", "pretrain-autoencoder"])
def test_precision_flag_and_the_old_mixed_precision_spelling(job):
    p = build_parser()
    sub = next(a for a in p._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices[job]
    cls = next(j for j in JOBS if j.name == job).options_class()
    base = {"sample": ["b", "--out", "o"], "finetune": ["b", "--labeled", "l", "--out", "o"]}.get(job, ["d", "--out", "o"])
    assert build_options(cls, sub.parse_args(base)).precision == "auto"
    assert build_options(cls, sub.parse_args(base + ["--precision", "bf16"])).precision == "bf16"
    assert build_options(cls, sub.parse_args(base + ["--mixed-precision", "no"])).precision == "fp32"
    assert build_options(cls, sub.parse_args(base + ["--mixed-precision", "fp16"])).precision == "fp16"
    with pytest.raises(SystemExit):
        sub.parse_args(base + ["--precision", "fp64"])


def test_training_accelerator_gets_the_resolved_precision():
    from napari_histodiff.core.train.loop import make_accelerator

    assert make_accelerator("cpu", "auto").mixed_precision == "no"
    assert make_accelerator("cpu", "bf16").mixed_precision == "bf16"
    assert make_accelerator("cpu", "fp32").mixed_precision == "no"


def psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


@pytest.mark.parametrize("guided", [False, True])
def test_bf16_sampling_gives_the_fp32_tiles(finetuned_bundle, guided):
    # the same seeds in fp32 and bf16: every tile within 30 dB PSNR of its fp32 twin (DDIM eta=0, so
    # the difference is the arithmetic only, not amplified noise paths)
    bundle = load_bundle(finetuned_bundle[0], device="cpu")
    kw = dict(n=8, steps=20, eta=0.0, seed=3, classes=["DAB-rich"] if guided else [], guidance=10.0 if guided else 0.0)
    ref = collect(bundle, precision="fp32", **kw)
    low = collect(bundle, precision="bf16", **kw)
    assert ref.shape == low.shape and not np.array_equal(ref, low)  # bf16 really ran
    assert psnr(ref, low).min() >= 30, psnr(ref, low)
