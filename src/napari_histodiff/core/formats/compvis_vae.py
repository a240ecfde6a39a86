"""CompVis first stage (``AutoencoderKL`` or ``VQModelInterface``) <-> diffusers ``AutoencoderKL`` / ``VQModel``.

The key table gives the same keys as diffusers' ``single_file_utils.convert_ldm_vae_checkpoint``
(a test checks this on the fixtures); it is written out here because the conversion must also
run backwards (bundle -> CompVis) and must account for every key.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base.errors import HistodiffError
from .keymap import Entry, conv_as_linear, plain, renamed

KL_TARGET = "ldm.models.autoencoder.AutoencoderKL"
VQ_TARGETS = ("ldm.models.autoencoder.VQModelInterface", "ldm.models.autoencoder.VQModel",
              "taming.models.vqgan.VQModel")
RES_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}


@dataclass
class CompVisFirstStage:
    kind: str  # "kl" or "vq"
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    embed_dim: int
    resolution: int
    in_channels: int = 3
    out_ch: int = 3
    n_embed: int = 0

    @property
    def levels(self) -> int:
        return len(self.ch_mult)

    @property
    def factor(self) -> int:
        return 2 ** (self.levels - 1)

    @property
    def latent_channels(self) -> int:
        return self.embed_dim

    def to_config(self) -> dict:
        dd = {"double_z": self.kind == "kl", "z_channels": self.z_channels, "resolution": self.resolution,
              "in_channels": self.in_channels, "out_ch": self.out_ch, "ch": self.ch, "ch_mult": list(self.ch_mult),
              "num_res_blocks": self.num_res_blocks, "attn_resolutions": [], "dropout": 0.0}
        params = {"embed_dim": self.embed_dim, "ddconfig": dd, "lossconfig": {"target": "torch.nn.Identity"}}
        if self.kind == "vq":
            params["n_embed"] = self.n_embed
            return {"target": VQ_TARGETS[0], "params": params}
        return {"target": KL_TARGET, "params": params}


def read_first_stage(cfg, problems: list) -> CompVisFirstStage | None:
    if not isinstance(cfg, dict) or "target" not in cfg:
        problems.append("first_stage_config is missing or has no target (the autoencoder)")
        return None
    target, params = cfg["target"], cfg.get("params") or {}
    if target == KL_TARGET:
        kind = "kl"
    elif target in VQ_TARGETS:
        kind = "vq"
    else:
        problems.append(f"first stage {target} is not a CompVis AutoencoderKL or VQModelInterface")
        return None
    dd = params.get("ddconfig") or {}
    need = ["ch", "ch_mult", "num_res_blocks", "z_channels", "resolution"]
    absent = [k for k in need if k not in dd] + [k for k in ["embed_dim"] if k not in params]
    if kind == "vq" and "n_embed" not in params:
        absent.append("n_embed")
    if absent:
        problems.append(f"the first stage config lacks {', '.join(absent)}")
        return None
    if dd.get("attn_resolutions"):
        problems.append(f"the first stage has attention at resolutions {dd['attn_resolutions']} inside its levels; "
                        "only the middle attention of the usual LDM autoencoders is supported")
    if kind == "kl" and not dd.get("double_z", True):
        problems.append("the KL first stage has double_z: false")
    if kind == "kl" and params["embed_dim"] != dd["z_channels"]:
        problems.append(f"the KL first stage has embed_dim {params['embed_dim']} != z_channels {dd['z_channels']}, "
                        "which diffusers AutoencoderKL cannot express")
    if dd.get("attn_type", "vanilla") != "vanilla":
        problems.append(f"first stage attention type {dd['attn_type']!r} is not supported")
    for c in (dd["ch"] * m for m in dd["ch_mult"]):
        if c % 32:
            problems.append(f"first stage level with {c} channels cannot be normalised in 32 groups")
    return CompVisFirstStage(kind=kind, ch=dd["ch"], ch_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
                             z_channels=dd["z_channels"], embed_dim=params["embed_dim"], resolution=dd["resolution"],
                             in_channels=dd.get("in_channels", 3), out_ch=dd.get("out_ch", 3),
                             n_embed=params.get("n_embed", 0))


def diffusers_config(f: CompVisFirstStage, scaling_factor: float) -> dict:
    n = f.levels
    cfg = dict(in_channels=f.in_channels, out_channels=f.out_ch, down_block_types=["DownEncoderBlock2D"] * n,
               up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=[f.ch * m for m in f.ch_mult],
               layers_per_block=f.num_res_blocks, latent_channels=f.z_channels, norm_num_groups=32,
               sample_size=f.resolution, scaling_factor=scaling_factor)
    if f.kind == "vq":
        cfg.update(num_vq_embeddings=f.n_embed, vq_embed_dim=f.embed_dim)
    return cfg


def build_first_stage(f: CompVisFirstStage, scaling_factor: float):
    from diffusers import AutoencoderKL, VQModel

    return (VQModel if f.kind == "vq" else AutoencoderKL)(**diffusers_config(f, scaling_factor))


def _attn(src, dst):
    return (plain(f"{src}.norm", f"{dst}.group_norm")
            + [e for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))
               for e in conv_as_linear(f"{src}.{a}", f"{dst}.{b}", ndim=4)])


def key_table(levels: int, num_res_blocks: int, kind: str) -> list[Entry]:
    """Entries from CompVis first-stage keys (without ``first_stage_model.``) to diffusers keys."""
    e = []
    for side in ("encoder", "decoder"):
        e += plain(f"{side}.conv_in", f"{side}.conv_in") + plain(f"{side}.conv_out", f"{side}.conv_out")
        e += plain(f"{side}.norm_out", f"{side}.conv_norm_out")
        e += renamed(f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", RES_PARTS)
        e += _attn(f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0")
        e += renamed(f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", RES_PARTS)
    for i in range(levels):
        for j in range(num_res_blocks):
            e += renamed(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", RES_PARTS)
        if i != levels - 1:
            e += plain(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
        up = levels - 1 - i
        for j in range(num_res_blocks + 1):
            e += renamed(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}", RES_PARTS)
        if i != 0:
            e += plain(f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv")
    e += plain("quant_conv", "quant_conv") + plain("post_quant_conv", "post_quant_conv")
    if kind == "vq":
        e += plain("quantize.embedding", "quantize.embedding", names=("weight",))
    return e


def first_stage_params(vae) -> CompVisFirstStage:
    """The CompVis config of a diffusers autoencoder, or one error listing what CompVis cannot express."""
    c = vae.config
    problems = []
    ch = list(c.block_out_channels)
    if any(x % ch[0] for x in ch):
        problems.append(f"block_out_channels {ch} are not multiples of the first")
    if c.norm_num_groups != 32:
        problems.append(f"norm_num_groups is {c.norm_num_groups}; CompVis has 32")
    if set(c.down_block_types) != {"DownEncoderBlock2D"} or set(c.up_block_types) != {"UpDecoderBlock2D"}:
        problems.append("the autoencoder has attention inside its levels")
    if not c.get("mid_block_add_attention", True):
        problems.append("the autoencoder has no middle attention")
    if problems:
        raise HistodiffError("this autoencoder cannot be written in the CompVis layout: " + "; ".join(problems))
    vq = type(vae).__name__ == "VQModel"
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    return CompVisFirstStage(
        kind="vq" if vq else "kl", ch=ch[0], ch_mult=tuple(x // ch[0] for x in ch), num_res_blocks=c.layers_per_block,
        z_channels=c.latent_channels, embed_dim=(c.vq_embed_dim or c.latent_channels) if vq else c.latent_channels,
        resolution=size, in_channels=c.in_channels, out_ch=c.out_channels,
        n_embed=c.num_vq_embeddings if vq else 0)
