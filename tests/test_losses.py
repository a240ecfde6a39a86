import math

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import save_file

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.train.losses import (
    LPIPS,
    PatchDiscriminator,
    adaptive_gan_weight,
    generator_loss,
    hinge_d_loss,
    kl_loss,
    load_lpips,
)


# ---------------------------------------------------------------- discriminator


@pytest.mark.parametrize("size, n_expected", [(32, 3), (64, 3), (256, 3), (16, 2), (8, 1)])
def test_discriminator_auto_layers_output_map(size, n_expected):
    torch.manual_seed(0)
    d = PatchDiscriminator(ndf=8, n_layers=None, tile_size=size)
    assert d.n_layers == n_expected
    out = d(torch.randn(2, 3, size, size))
    assert out.shape[:2] == (2, 1)
    assert out.shape[2] >= 2 and out.shape[3] >= 2
    assert torch.isfinite(out).all()


def test_discriminator_taming_layout_and_init():
    d = PatchDiscriminator()  # defaults: n_layers=3, ndf=64
    convs = [m for m in d.main if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    w = torch.cat([c.weight.flatten() for c in convs])
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    bns = [m for m in d.main if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(abs(b.weight.mean().item() - 1.0) < 0.01 and (b.bias == 0).all() for b in bns)
    assert d(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # the classic 70x70 PatchGAN map


def test_discriminator_too_small_tile():
    with pytest.raises(HistodiffError, match="too small"):
        PatchDiscriminator(n_layers=None, tile_size=4)


def test_discriminator_learns_real_vs_fake():
    torch.manual_seed(0)
    d = PatchDiscriminator(ndf=16, n_layers=None, tile_size=32)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.9))
    losses = []
    for _ in range(15):
        real = 0.5 + 0.05 * torch.randn(4, 3, 32, 32)
        fake = torch.randn(4, 3, 32, 32)
        loss = hinge_d_loss(d(real), d(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.5
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- loss terms


def test_hinge_and_generator_loss_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = [0, 0.5, 2]  -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = [0, 1, 2]    -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1.0))
    assert hinge_d_loss(torch.full((4,), 1.0), torch.full((4,), -1.0)).item() == 0.0
    assert generator_loss(fake).item() == pytest.approx(1 / 3)


def test_kl_loss_zero_and_hand_formula():
    zero = DiagonalGaussianDistribution(torch.zeros(2, 6, 4, 4))  # mean 0, logvar 0
    assert kl_loss(zero).item() == 0.0

    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 3, 4, 4), 0.5 * torch.randn(3, 3, 4, 4)
    post = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    per_item = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3))
    got = kl_loss(post).item()
    assert got > 0
    assert got == pytest.approx(per_item.mean().item(), rel=1e-5)

    # a single element by hand: mean 1, logvar log 2 -> 0.5 * (1 + 2 - 1 - ln 2)
    one = torch.zeros(1, 2, 1, 1)
    one[0, 0], one[0, 1] = 1.0, math.log(2.0)
    assert kl_loss(DiagonalGaussianDistribution(one)).item() == pytest.approx(0.5 * (2 - math.log(2)), rel=1e-6)


def test_adaptive_gan_weight_by_hand():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    a = torch.tensor([3.0, 4.0])
    rec = (w * a).sum()  # grad = a, norm 5
    g = 0.5 * (w**2).sum()  # grad = w, norm sqrt(5)
    weight = adaptive_gan_weight(rec, g, w)
    assert weight.item() == pytest.approx(5.0 / (math.sqrt(5.0) + 1e-4), rel=1e-6)
    assert not weight.requires_grad
    # graphs are retained: a second call works and a backward still runs
    adaptive_gan_weight(rec, g, w)
    (rec + weight * g).backward()
    assert torch.allclose(w.grad, a + weight * w.detach())

    # g with no gradient at the last layer -> 5 / 1e-4, clamped
    rec, g0 = (w * a).sum(), (w * 0.0).sum()
    assert adaptive_gan_weight(rec, g0, w).item() == 1e4
    assert adaptive_gan_weight(rec, g0, w, max_weight=100.0).item() == 100.0


# ---------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def lpips_model():
    torch.manual_seed(0)
    return LPIPS()


def test_lpips_state_dict_names(lpips_model):
    keys = set(lpips_model.state_dict())
    for k in ["net.slice1.0.weight", "net.slice1.2.bias", "net.slice2.5.weight", "net.slice2.7.weight",
              "net.slice3.14.weight", "net.slice4.21.weight", "net.slice5.24.weight", "net.slice5.28.bias",
              "scaling_layer.shift", "scaling_layer.scale"] + [f"lin{i}.model.1.weight" for i in range(5)]:
        assert k in keys
    assert len([k for k in keys if k.startswith("net.")]) == 26  # 13 VGG16 convs, weight + bias
    assert lpips_model.lin3.model[1].weight.shape == (1, 512, 1, 1)


def test_lpips_frozen_and_distance(lpips_model):
    assert all(not p.requires_grad for p in lpips_model.parameters())
    lpips_model.train()
    assert not lpips_model.training  # stays in eval mode
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    noise = torch.randn_like(x)
    assert lpips_model(x, x).shape == (2, 1, 1, 1)
    assert torch.all(lpips_model(x, x) == 0)
    d = [lpips_model(x, (x + s * noise).clamp(-1, 1)).flatten() for s in (0.02, 0.1, 0.5)]
    assert torch.all(d[0] > 0)
    assert torch.all(d[0] < d[1]) and torch.all(d[1] < d[2])
    # gradients flow to the input (as needed for autoencoder training)
    y = (x + 0.1 * noise).requires_grad_(True)
    lpips_model(x, y).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_load_lpips_roundtrip_safetensors_and_pt(lpips_model, tmp_path):
    state = {k: v.contiguous() for k, v in lpips_model.state_dict().items()}
    state["lin2.model.1.weight"] = torch.rand_like(state["lin2.model.1.weight"])  # differ from the default
    torch.manual_seed(2)
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    ref = LPIPS()
    ref.load_state_dict(state)
    expected = ref(x, y)

    st = tmp_path / "lpips.safetensors"
    save_file(state, str(st))
    assert torch.equal(load_lpips(st)(x, y), expected)

    # .pt wrapped in a Lightning-style checkpoint, without the optional scaling buffers
    pt = tmp_path / "lpips.ckpt"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("scaling_layer.")}}, pt)
    loaded = load_lpips(pt)
    assert torch.equal(loaded(x, y), expected)
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_load_lpips_wrong_keys(lpips_model, tmp_path):
    state = {k: v.contiguous() for k, v in lpips_model.state_dict().items() if not k.startswith("net.slice5.")}
    state["foo.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(HistodiffError, match="missing keys") as info:
        load_lpips(path)
    msg = str(info.value)
    assert "net.slice5.24.weight" in msg and "foo.weight" in msg and "VGG16" in msg

    # only the taming vgg_lpips lin layers (no VGG weights): missing net.* keys
    lins = tmp_path / "vgg.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, lins)
    with pytest.raises(HistodiffError, match="missing keys.*net.slice1.0"):
        load_lpips(lins)

    # right keys, wrong shape
    state = {k: v.contiguous() for k, v in lpips_model.state_dict().items()}
    state["lin0.model.1.weight"] = torch.zeros(1, 3, 1, 1)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(HistodiffError, match="does not fit"):
        load_lpips(tmp_path / "shape.pt")


def test_load_lpips_unreadable(tmp_path):
    with pytest.raises(HistodiffError, match="not found"):
        load_lpips(tmp_path / "absent.safetensors")
    for name in ("junk.safetensors", "junk.pt"):
        path = tmp_path / name
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy().tobytes())
        with pytest.raises(HistodiffError, match=name):
            load_lpips(path)


_EXECUTED = []


def _payload():
    _EXECUTED.append(True)
    return {}


class _Evil:
    def __reduce__(self):
        return (_payload, ())


def test_load_lpips_refuses_code_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil()}, path)
    with pytest.raises(HistodiffError, match="evil.pt.*other than tensors"):
        load_lpips(path)
    assert _EXECUTED == []
