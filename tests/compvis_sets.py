"""CompVis / Lightning test checkpoints made here with random weights, so the converter and safety tests
run without ../shared: the same file names, layout and reference outputs as ../shared/fixtures/compvis
(see its README), plus a checkpoint whose unpickling with code execution allowed would open a file.

The references come from the diffusers models the checkpoint was written from, so they check the
round trip through the CompVis layout; the shared set's references come from the CompVis code itself."""

from __future__ import annotations

import contextlib
import copy
import io
import pickletools
import re
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import torch

LIGHTNING = "pytorch_lightning.callbacks.model_checkpoint"
GLOBAL_STEP = 4321
SCALE = 0.8

# (first stage channels, UNet channels) of the two shared sets
SHAPES = {"public": ((32, 64, 32), (32, 32)), "public_full": ((32, 64, 128), (32, 64))}


def preset(name: str):
    from napari_histodiff.core.models.presets import AutoencoderConfig, UNetConfig, tiny

    vae_ch, unet_ch = SHAPES[name]
    p = tiny()
    p.autoencoder = AutoencoderConfig(block_out_channels=vae_ch, layers_per_block=1, latent_channels=3,
                                      norm_num_groups=32)
    p.unet = UNetConfig(block_out_channels=unet_ch, layers_per_block=1, attention_levels=(True, True),
                        attention_head_dim=16, norm_num_groups=32, scale_shift_norm=False, resnet_updown=False,
                        mid_attention_norm=True)
    return p


def randomised(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@contextlib.contextmanager
def module_named(name: str, **attrs):
    """A stand-in module (and its parents) in sys.modules while pickling a class under that name."""
    added = []
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
            added.append(sub)
    for key, value in attrs.items():
        setattr(sys.modules[name], key, value)
    try:
        yield sys.modules[name]
    finally:
        for sub in added:
            del sys.modules[sub]


def lightning_callback_class():
    """A class that pickles as Lightning's ModelCheckpoint (the key of ``callbacks`` in a Lightning .ckpt)."""
    cls = type("ModelCheckpoint", (), {})
    cls.__module__, cls.__qualname__ = LIGHTNING, "ModelCheckpoint"
    return cls


def write_set(folder: Path, name: str, seed: int) -> None:
    """``<name>.ckpt``, ``<name>.yaml`` and ``<name>_reference.npz`` in the layout of the shared set."""
    import yaml

    from napari_histodiff.core.formats.bundle import Bundle, new_meta
    from napari_histodiff.core.formats.compvis import to_compvis

    p = preset(name)
    torch.manual_seed(seed)
    vae, unet = randomised(p.build_vae(), seed + 1), randomised(p.build_unet(), seed + 2)
    ema = randomised(copy.deepcopy(unet), seed + 3)
    meta = new_meta(p)
    meta["latent_scale_factor"] = SCALE
    sd, config = to_compvis(Bundle(vae=vae, unet=unet, scheduler=p.build_scheduler(), meta=meta))
    ema_sd, _ = to_compvis(Bundle(vae=vae, unet=ema, scheduler=p.build_scheduler(), meta=meta))
    unet_keys = [k for k in sd if k.startswith("model.diffusion_model.")]
    for key in unet_keys:  # Lightning's LitEma: the parameter name without "model." and without dots
        sd["model_ema." + key[len("model."):].replace(".", "")] = ema_sd[key]
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(GLOBAL_STEP, dtype=torch.int)
    callback = lightning_callback_class()
    ckpt = {"epoch": 3, "global_step": GLOBAL_STEP, "pytorch-lightning_version": "1.4.2", "state_dict": sd,
            "callbacks": {callback: {"monitor": "val/loss_simple_ema", "best_model_score": torch.tensor(0.1),
                                     "save_top_k": 1}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 5e-5, "params": [0, 1]}]}],
            "lr_schedulers": [{"last_epoch": 3, "base_lrs": [5e-5]}]}
    with module_named(LIGHTNING, ModelCheckpoint=callback):
        torch.save(ckpt, folder / f"{name}.ckpt")
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, default_flow_style=None))

    g = torch.Generator().manual_seed(seed + 4)
    x = torch.randn(2, 3, p.latent_size, p.latent_size, generator=g)
    t = torch.tensor([10, 900])
    img = torch.rand(2, 3, p.tile_size, p.tile_size, generator=g) * 2 - 1
    with torch.no_grad():
        post = vae.encode(img).latent_dist
        ref = {"x_latent": x, "t": t, "img": img, "unet_eps": unet(x, t).sample, "unet_eps_ema": ema(x, t).sample,
               "posterior_moments": vae.quant_conv(vae.encoder(img)), "posterior_mean": post.mean,
               "posterior_logvar": post.logvar, "posterior_std": post.std, "z_mode_scaled": post.mode() * SCALE,
               "decoded": vae.decode(x / SCALE).sample, "recon_mode": vae.decode(post.mode()).sample,
               "alphas_cumprod": sd["alphas_cumprod"], "betas": sd["betas"], "scale_factor": torch.tensor(SCALE)}
    np.savez(folder / f"{name}_reference.npz", **{k: v.numpy() for k, v in ref.items()})


class OpensAFile:
    """Pickles as ``io.open(target, "w")``: unpickling it with code execution allowed creates target."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return io.open, (self.target, "w")


def payload_paths(ckpt: Path) -> list[Path]:
    """Absolute paths among a checkpoint's pickled strings (read with pickletools, never unpickled)."""
    with zipfile.ZipFile(ckpt) as zf:
        pickles = [zf.read(n) for n in zf.namelist() if n.endswith("data.pkl")]
    return [Path(arg) for data in pickles for _, arg, _ in pickletools.genops(data)
            if isinstance(arg, str) and re.fullmatch(r"/(tmp|var|home|root|etc)/\S+", arg)]


def write_malicious(path: Path, target: Path) -> None:
    """A Lightning-looking checkpoint with a payload that would create ``target`` if it were unpickled."""
    ckpt = {"epoch": 0, "global_step": 1, "pytorch-lightning_version": "1.4.2",
            "state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(3, 32, 3, 3)},
            "callbacks": {"ModelCheckpoint": OpensAFile(target)}}
    torch.save(ckpt, path)


def make_compvis_fixtures(folder: Path) -> Path:
    """The generated sets ``public`` and ``public_full`` and ``malicious.ckpt`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(SHAPES):
        write_set(folder, name, 10 * seed)
    write_malicious(folder / "malicious.ckpt", folder / "created_by_unpickling")
    return folder
