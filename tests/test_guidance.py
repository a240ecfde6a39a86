"""Class-guided sampling: guidance works, scale 0 is unguided exactly, every sampler runs."""

import numpy as np
import pytest
from skimage.color import rgb2hed

from napari_histodiff import load_bundle
from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.generate.sampling import SampleOptions, sample_tiles


def collect(bundle, **kw):
    tiles, classes = {}, {}
    for event in sample_tiles(bundle, SampleOptions(**kw)):
        if event.data is not None:
            for k, tile in enumerate(event.data["tiles"]):
                tiles[event.data["start"] + k] = tile
                classes[event.data["start"] + k] = event.data["classes"][k]
    order = sorted(tiles)
    return np.stack([tiles[i] for i in order]), [classes[i] for i in order]


def stain_features(tiles):
    hed = np.stack([rgb2hed(t).reshape(-1, 3).mean(0) for t in tiles])
    return hed[:, [0, 2]]  # hematoxylin, DAB


@pytest.fixture(scope="module")
def bundle(finetuned_bundle):
    return load_bundle(finetuned_bundle[0], device="cpu")


def test_guided_tiles_land_in_their_class_more_often(bundle, labeled_tiles):
    # an independent judge: nearest class mean of stain content, fitted on the real labeled tiles
    feats = stain_features(labeled_tiles.tiles)
    means = np.stack([feats[labeled_tiles.labels == k].mean(0) for k in range(2)])
    scale = feats.std(0)

    def judge(tiles):
        f = stain_features(tiles) / scale
        return np.argmin(((f[:, None] - means[None] / scale) ** 2).sum(-1), axis=1)

    rates = {}
    for g in (0.0, 10.0):
        tiles, classes = collect(bundle, n=24, classes=bundle.class_names, guidance=g, steps=20, batch_size=24)
        target = np.array([bundle.class_index(c) for c in classes])
        rates[g] = float((judge(tiles) == target).mean())
    assert rates[10.0] >= 0.75 and rates[10.0] >= rates[0.0] + 0.2, (
        f"judge agrees with the target class for {rates[10.0]:.0%} of guided tiles (scale 10) "
        f"and {rates[0.0]:.0%} of unguided ones")


def test_guidance_zero_is_unguided_sampling_bit_exactly(bundle):
    a, _ = collect(bundle, n=3, classes=bundle.class_names, guidance=0.0, steps=10)
    b, _ = collect(bundle, n=6, steps=10)
    assert np.array_equal(a, b)


def test_guided_sample_i_is_independent_of_batch_size(bundle):
    # fp32: in bf16 (auto on CPUs that have it) batched kernels round differently (test_sampling.py)
    a, _ = collect(bundle, n=3, classes=bundle.class_names, steps=10, batch_size=6, precision="fp32")
    b, _ = collect(bundle, n=3, classes=bundle.class_names, steps=10, batch_size=4, precision="fp32")
    diff = np.abs(a.astype(int) - b)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def target_probability(bundle, tiles, classes):
    """The bundle's latent classifier at t = 0 on the tiles' re-encoded latents: p(target class)."""
    import torch

    from napari_histodiff.core.models.pixels import to_model_input

    with torch.no_grad():
        z = bundle.vae.encode(to_model_input(torch.from_numpy(tiles), "cpu")).latent_dist.mean * bundle.scale_factor
        p = bundle.latent_classifier(z, torch.zeros(len(z), dtype=torch.long)).softmax(-1)
    return p[torch.arange(len(z)), torch.tensor([bundle.class_index(c) for c in classes])].numpy()


@pytest.mark.parametrize("sampler", ["ddim", "dpm", "ddpm"])
@pytest.mark.parametrize("steps", [5, 10, 50])
def test_every_sampler_guides_at_any_step_count(bundle, sampler, steps):
    kw = dict(n=4, classes=bundle.class_names, sampler=sampler, steps=steps, batch_size=8, seed=5)
    guided, classes = collect(bundle, guidance=10.0, **kw)
    scale0, _ = collect(bundle, guidance=0.0, **kw)
    unguided, _ = collect(bundle, n=8, sampler=sampler, steps=steps, batch_size=8, seed=5)
    assert classes == [c for c in bundle.class_names for _ in range(4)]
    # scale 0 is unguided sampling bit for bit (same seeds, same noise), for every sampler
    assert np.array_equal(scale0, unguided)
    if steps == 5:  # the same seed gives the same guided tiles
        assert np.array_equal(collect(bundle, guidance=10.0, **kw)[0], guided)
    # decoded tissue, not a flat or saturated image
    assert guided.shape == (8, 32, 32, 3) and guided.dtype == np.uint8
    assert guided.std() > 3 and 60 < guided.mean() < 200 and np.mean((guided == 0) | (guided == 255)) < 0.1
    # from the same noise, guidance raises the target class's probability under the classifier it follows
    p_guided, p_plain = target_probability(bundle, guided, classes), target_probability(bundle, scale0, classes)
    assert not np.array_equal(guided, scale0) and p_guided.mean() > p_plain.mean(), (p_guided, p_plain)


def test_noisy_classifier_beats_chance_at_mid_timesteps(finetuned_bundle):
    _, result = finetuned_bundle
    last = result["latent_classifier"]["history"][-1][1]
    assert last["acc_t250"] > 0.65 and last["acc_t500"] > 0.6, last  # two classes: chance is 0.5


@pytest.mark.parametrize("kw, message", [
    (dict(classes=["TUM"]), "unknown class 'TUM'; this bundle knows DAB-rich, hematoxylin-rich"),
    (dict(n=0), "^n must be at least 1"),
    (dict(guidance=-1.0, classes=["DAB-rich"]), "^guidance must be at least 0"),
    (dict(steps=1001), r"steps must be below 1000 \(the model has 1000 training timesteps\)"),
    (dict(sampler="euler"), "sampler must be one of ddim, dpm, ddpm"),
])
def test_bad_sampling_options_are_named(bundle, kw, message):
    with pytest.raises(HistodiffError, match=message):
        collect(bundle, **kw)


def test_guidance_needs_a_finetuned_bundle(trained_bundle):
    b = load_bundle(trained_bundle, device="cpu")
    with pytest.raises(HistodiffError, match="histodiff finetune"):
        collect(b, classes=["x"])


# -- DDPM guidance variance (hand-computed from the beta schedule) -------------------------------

VARIANCE_TYPES = ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]
LARGE = ("fixed_large", "fixed_large_log")  # beta_t; the others: posterior variance (learned* fall back)
TRAIN, STEPS = 1000, 8  # "leading" spacing with offset 1: 876, 751, ..., 1 (prev_t = t - 125)


def ddpm_bundle(variance_type):
    from types import SimpleNamespace

    import torch
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=TRAIN, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, variance_type=variance_type, steps_offset=1)
    w = torch.from_numpy(np.random.default_rng(0).normal(size=(2 * 4 * 4, 3)).astype(np.float32))
    return SimpleNamespace(scheduler=sched, w=w,
                           unet=lambda z, t: SimpleNamespace(sample=0.5 * z),
                           latent_classifier=lambda z, t: z.flatten(1) @ w)


def hand_variance(variance_type, t, prev):
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, TRAIN) ** 2
    abar = np.cumprod(1 - betas)
    a_t, a_prev = abar[t], abar[prev] if prev >= 0 else 1.0
    beta = 1 - a_t / a_prev
    return beta if variance_type in LARGE else max(beta * (1 - a_prev) / (1 - a_t), 1e-20)


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
def test_ddpm_variance_matches_the_hand_computed_value(variance_type):
    from napari_histodiff.core.generate.sampling import ddpm_variance, make_scheduler

    sched = make_scheduler(ddpm_bundle(variance_type), "ddpm", STEPS)
    assert [int(t) for t in sched.timesteps[:2]] == [876, 751]
    for t, prev in ((876, 751), (251, 126), (1, -1)):
        expected = hand_variance(variance_type, t, prev)
        assert float(ddpm_variance(sched, t)) == pytest.approx(expected, rel=1e-4, abs=1e-24), (t, expected)


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
def test_ddpm_guidance_shifts_the_mean_by_variance_times_scale_times_gradient(variance_type):
    import torch

    from napari_histodiff.core.generate.sampling import denoise, make_scheduler

    bundle = ddpm_bundle(variance_type)
    z0 = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 2, 4, 4)).astype(np.float32))
    y = torch.tensor([0, 2])
    opts = SampleOptions(sampler="ddpm", steps=STEPS, guidance=3.0, strength=1.0)

    def steps(y):
        gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
        return list(denoise(bundle, z0.clone(), y, gens, opts, make_scheduler(bundle, "ddpm", STEPS)))

    guided, plain = steps(y), steps(None)
    # d/dz log softmax(z W)_y = W_y - W p, by hand
    x, w = z0.flatten(1).numpy().astype(np.float64), bundle.w.numpy().astype(np.float64)
    logits = x @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = w[:, y.numpy()].T - p @ w.T
    shift = 3.0 * hand_variance(variance_type, 876, 751) * grad
    got = (guided[0] - plain[0]).flatten(1).numpy()
    assert np.abs(shift).max() > 1e-3  # a shift that a wrong variance would miss
    np.testing.assert_allclose(got, shift, rtol=2e-3, atol=1e-6)
    assert all(torch.isfinite(z).all() for z in guided + plain)  # diffusers alone: NaN / TypeError for some types


# -- DDIM and DPM-Solver++ guidance (eps form, hand-computed) -------------------------------------

def eps_form_bundle():
    """A UNet that always predicts the same known eps, and a linear classifier (logits = z W) whose
    gradient is known in closed form: d/dz log softmax(z W)_y = W_y - W p."""
    from types import SimpleNamespace

    import torch
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=TRAIN, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, steps_offset=1)
    rng = np.random.default_rng(2)
    w = torch.from_numpy(0.3 * rng.normal(size=(2 * 4 * 4, 3)).astype(np.float32))  # logits far from saturation
    eps = torch.from_numpy(rng.normal(size=(2, 2, 4, 4)).astype(np.float32))
    return SimpleNamespace(scheduler=sched, w=w, eps=eps, unet=lambda z, t: SimpleNamespace(sample=eps.clone()),
                           latent_classifier=lambda z, t: z.flatten(1) @ w)


def hand_grad(z, w, y):
    x, w = z.flatten(1).numpy().astype(np.float64), w.numpy().astype(np.float64)
    logits = x @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (w[:, y].T - p @ w.T).reshape(z.shape)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
@pytest.mark.parametrize("steps", [3, 8])
def test_eps_guidance_matches_the_hand_computed_shift(sampler, steps):
    """eps_hat = eps - s * sqrt(1 - alpha_bar_t) * grad at the actual timestep t, and every step of the
    sampler equals the scheduler's own step taken with that hand-computed eps_hat."""
    import torch

    from napari_histodiff.core.generate.sampling import denoise, make_scheduler

    bundle, scale = eps_form_bundle(), 3.0
    alpha_bar = np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, TRAIN) ** 2)  # scaled_linear, by hand
    sched = make_scheduler(bundle, sampler, steps)
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), alpha_bar, rtol=1e-5)
    seen, step = [], sched.step

    def spy(eps, t, z, **kw):
        seen.append((eps.clone(), int(t)))
        return step(eps, t, z, **kw)

    sched.step = spy
    z0 = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 2, 4, 4)).astype(np.float32))
    y = torch.tensor([0, 2])
    opts = SampleOptions(sampler=sampler, steps=steps, guidance=scale, strength=1.0, eta=1.0)

    def gens():
        return [torch.Generator().manual_seed(s) for s in (5, 6)]

    out = list(denoise(bundle, z0.clone(), y, gens(), opts, sched))
    reference = make_scheduler(bundle, sampler, steps)
    assert [t for _, t in seen] == [int(t) for t in reference.timesteps] and len(out) == steps
    z, g = z0.clone(), gens()
    for k, t in enumerate(reference.timesteps):
        shift = scale * np.sqrt(1 - alpha_bar[int(t)]) * hand_grad(z, bundle.w, y.numpy())
        eps_hat = bundle.eps.numpy().astype(np.float64) - shift
        assert k > 0 or np.abs(shift).max() > 1e-2  # large enough that a wrong alpha_bar or sign would show
        np.testing.assert_allclose(seen[k][0].numpy(), eps_hat, rtol=1e-4, atol=1e-5)
        kw = {"eta": 1.0} if sampler == "ddim" else {}
        z = reference.step(torch.from_numpy(eps_hat).float(), t, z, generator=g, **kw).prev_sample
        torch.testing.assert_close(out[k], z, rtol=1e-4, atol=1e-5)


# -- a bundle whose fine-tuning stopped before the selection classifier --------------------------

def test_bundle_without_selection_classifier_guides_and_says_it_cannot_select(finetuned_bundle, tmp_path):
    import shutil

    from napari_histodiff.core.base.events import run_to_end
    from napari_histodiff.core.formats.records import read_records
    from napari_histodiff.core.generate.sample_set import select_folder
    from napari_histodiff.core.generate.selection import SelectionRule
    from napari_histodiff.core.jobs.sample import sample

    path = tmp_path / "interrupted"
    shutil.copytree(finetuned_bundle[0], path)
    shutil.rmtree(path / "selection_classifier")
    partial = load_bundle(path, device="cpu")  # each stage's output loads on its own
    assert partial.latent_classifier is not None and partial.selection_classifier is None and partial.path == path

    events = []
    out = tmp_path / "s"
    opts = SampleOptions(out=out, n=2, classes=["DAB-rich"], steps=4, device="cpu")
    result = run_to_end(sample(opts, model=partial), events.append)
    notes = [e.message for e in events if e.stage == "warning"]
    assert len(notes) == 1, notes
    assert notes[0].startswith("this bundle has no selection classifier yet (fine-tuning was interrupted before "
                               "that stage); tiles are guided but not selected: resume the fine-tuning")
    assert f"--out {path} --resume" in notes[0]
    assert result["selected"] is False and "not selected" in result["message"]
    records = read_records(out)
    assert [r.target_class for r in records] == ["DAB-rich"] * 2 and all(r.guidance == 10.0 for r in records)
    assert all(r.kept is None and r.confidence is None and r.predicted_class == "" for r in records)
    with pytest.raises(HistodiffError, match="no selection classifier yet.*--resume"):
        select_folder(out, partial, SelectionRule())
