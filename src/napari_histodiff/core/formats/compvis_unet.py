"""CompVis ``openaimodel.UNetModel`` (unconditional) <-> diffusers ``UNet2DModel``: config and key table.

The key table is written out from the structure of both models (the reference converter,
diffusers' ``scripts/convert_ldm_original_checkpoint_to_diffusers.py``, is not installed with
diffusers and ``single_file_utils`` only converts the cross-attention UNet).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base.errors import HistodiffError
from .keymap import Entry, conv_as_linear, plain, renamed

TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
RES_PARTS = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
GROUPS = 32  # GroupNorm32: CompVis always normalises in 32 groups


@dataclass
class CompVisUNet:
    """The fields of a CompVis UNetModel config that decide its structure."""

    image_size: int
    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    num_heads: int = -1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    legacy: bool = True
    dropout: float = 0.0

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def channels(self) -> list[int]:
        return [self.model_channels * m for m in self.channel_mult]

    @property
    def attention_levels(self) -> list[bool]:
        return [2 ** i in self.attention_resolutions for i in range(self.levels)]

    def heads(self, ch: int, up: bool = False) -> int:
        if self.num_head_channels != -1:
            return ch // self.num_head_channels
        if up and self.legacy and self.num_heads_upsample != -1:
            return self.num_heads_upsample
        return self.num_heads

    def block_heads(self) -> list[int]:
        """Heads of each diffusers block: down blocks, mid block, up blocks."""
        ch, attn, n = self.channels, self.attention_levels, self.levels
        down = [self.heads(c) if a else 0 for c, a in zip(ch, attn)]
        up = [self.heads(ch[n - 1 - i], up=True) if attn[n - 1 - i] else 0 for i in range(n)]
        return down + [self.heads(ch[-1])] + up

    def to_params(self) -> dict:
        out = {"image_size": self.image_size, "in_channels": self.in_channels, "out_channels": self.out_channels,
               "model_channels": self.model_channels, "attention_resolutions": list(self.attention_resolutions),
               "num_res_blocks": self.num_res_blocks, "channel_mult": list(self.channel_mult),
               "use_scale_shift_norm": self.use_scale_shift_norm, "resblock_updown": self.resblock_updown,
               "dropout": self.dropout}
        if self.num_head_channels != -1:
            out["num_head_channels"] = self.num_head_channels
        else:
            out["num_heads"] = self.num_heads
            if self.num_heads_upsample != -1:
                out["num_heads_upsample"] = self.num_heads_upsample
        if self.use_new_attention_order:
            out["use_new_attention_order"] = True
        return out


UNSUPPORTED = {
    "num_classes": "a class-conditional UNet (label embedding); napari-histodiff guides an unconditional UNet "
                   "with a classifier",
    "context_dim": "a cross-attention (text/image-conditioned) UNet",
    "use_spatial_transformer": "a cross-attention (spatial transformer) UNet",
    "n_embed": "a UNet that predicts codebook ids",
}


def read_unet_params(params: dict, problems: list) -> CompVisUNet | None:
    """Check a ``unet_config.params`` mapping; problems are appended, not raised."""
    known = set(CompVisUNet.__dataclass_fields__) | {"dims", "conv_resample", "use_fp16", "use_checkpoint",
                                                     "num_classes", "context_dim", "use_spatial_transformer",
                                                     "transformer_depth", "n_embed"}
    for key in sorted(set(params) - known):
        problems.append(f"unknown UNet setting {key!r}")
    for key, why in UNSUPPORTED.items():
        if params.get(key) not in (None, False):
            problems.append(f"the UNet is {why} ({key}: {params[key]}), which cannot be converted")
    if params.get("dims", 2) != 2:
        problems.append(f"the UNet has dims={params['dims']}; only 2-D UNets are supported")
    if params.get("conv_resample", True) is not True:
        problems.append("the UNet has conv_resample: false (no convolution in up/down sampling); not supported")
    need = ["image_size", "in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
            "attention_resolutions"]
    absent = [k for k in need if k not in params]
    if absent:
        problems.append(f"the UNet config lacks {', '.join(absent)}")
        return None
    values = {k: params[k] for k in CompVisUNet.__dataclass_fields__ if k in params}
    for k in ("channel_mult", "attention_resolutions"):
        values[k] = tuple(int(v) for v in values[k])
    u = CompVisUNet(**values)
    if u.num_heads == -1 and u.num_head_channels == -1:
        problems.append("the UNet config sets neither num_heads nor num_head_channels")
        return None
    for c in u.channels:
        if c % GROUPS:
            problems.append(f"UNet level with {c} channels cannot be normalised in {GROUPS} groups")
    for i, (h, blk) in enumerate(zip(u.block_heads(), _block_channels(u))):
        if h and blk % h:
            problems.append(f"UNet block {i}: {blk} channels cannot be split into {h} heads")
    return u


def _block_channels(u: CompVisUNet) -> list[int]:
    ch = u.channels
    return ch + [ch[-1]] + ch[::-1]


def diffusers_config(u: CompVisUNet) -> tuple[str, dict]:
    """(class name, config) of the diffusers UNet that computes exactly what ``u`` computes."""
    attn = u.attention_levels
    plain_down = "ResnetDownsampleBlock2D" if u.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if u.resblock_updown else "UpBlock2D"
    heads = u.block_heads()
    dims = {c // h for c, h in zip(_block_channels(u), heads) if h}
    config = dict(
        sample_size=u.image_size, in_channels=u.in_channels, out_channels=u.out_channels,
        down_block_types=[("AttnDownBlock2D" if a else plain_down) for a in attn],
        up_block_types=[("AttnUpBlock2D" if a else plain_up) for a in reversed(attn)],
        block_out_channels=u.channels, layers_per_block=u.num_res_blocks, norm_num_groups=GROUPS,
        attn_norm_num_groups=GROUPS, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
        resnet_time_scale_shift="scale_shift" if u.use_scale_shift_norm else "default",
        downsample_type="resnet" if u.resblock_updown else "conv",
        upsample_type="resnet" if u.resblock_updown else "conv", dropout=u.dropout,
    )
    if len(dims) == 1:
        return "UNet2DModel", {**config, "attention_head_dim": dims.pop()}
    return "HistodiffUNet2DModel", {**config, "attention_head_dim": None, "attention_heads": heads}


def build_unet(u: CompVisUNet):
    from diffusers import UNet2DModel

    from ..models.unet import HistodiffUNet2DModel

    name, config = diffusers_config(u)
    return (UNet2DModel if name == "UNet2DModel" else HistodiffUNet2DModel)(**config)


# -- key table ------------------------------------------------------------------------------

def _res(src, dst):
    return renamed(src, dst, RES_PARTS)


def _attn(src, dst, heads: int, new_order: bool):
    """norm / qkv (Conv1d, 3C) / proj_out -> group_norm / to_q, to_k, to_v / to_out.0."""
    def split(ts):
        t = ts[0]
        c3 = t.shape[0]
        c = c3 // 3
        if new_order:  # QKVAttention: (3, heads, ch)
            parts = t.reshape(3, c, *t.shape[1:])
        else:  # QKVAttentionLegacy: (heads, 3, ch)
            parts = t.reshape(heads, 3, c // heads, *t.shape[1:]).transpose(0, 1).reshape(3, c, *t.shape[1:])
        return [p.reshape(c, -1) if t.ndim > 1 else p for p in parts]

    def join(ts):
        c = ts[0].shape[0]
        stacked = torch.stack(list(ts))  # (3, C, ...)
        if not new_order:
            stacked = stacked.reshape(3, heads, c // heads, *stacked.shape[2:]).transpose(0, 1)
        out = stacked.reshape(3 * c, *ts[0].shape[1:])
        return [out.unsqueeze(-1) if out.ndim == 2 else out]

    qkv = [Entry((f"{src}.qkv.{n}",), tuple(f"{dst}.to_{x}.{n}" for x in "qkv"), split, join)
           for n in ("weight", "bias")]
    return (plain(f"{src}.norm", f"{dst}.group_norm") + qkv
            + conv_as_linear(f"{src}.proj_out", f"{dst}.to_out.0", ndim=3))


def key_table(u: CompVisUNet) -> list[Entry]:
    """Entries from CompVis UNet keys (without ``model.diffusion_model.``) to diffusers keys."""
    n, nrb, attn, updown = u.levels, u.num_res_blocks, u.attention_levels, u.resblock_updown
    heads = u.block_heads()
    new = u.use_new_attention_order
    e = (plain("time_embed.0", "time_embedding.linear_1") + plain("time_embed.2", "time_embedding.linear_2")
         + plain("input_blocks.0.0", "conv_in"))
    idx = 1
    for level in range(n):
        for j in range(nrb):
            e += _res(f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}")
            if attn[level]:
                e += _attn(f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}", heads[level], new)
            idx += 1
        if level != n - 1:
            if updown:
                e += _res(f"input_blocks.{idx}.0", f"down_blocks.{level}.downsamplers.0")
            else:
                e += plain(f"input_blocks.{idx}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            idx += 1
    e += _res("middle_block.0", "mid_block.resnets.0")
    e += _attn("middle_block.1", "mid_block.attentions.0", heads[n], new)
    e += _res("middle_block.2", "mid_block.resnets.1")
    idx = 0
    for i in range(n):
        level = n - 1 - i
        for j in range(nrb + 1):
            e += _res(f"output_blocks.{idx}.0", f"up_blocks.{i}.resnets.{j}")
            k = 1
            if attn[level]:
                e += _attn(f"output_blocks.{idx}.1", f"up_blocks.{i}.attentions.{j}", heads[n + 1 + i], new)
                k = 2
            if level != 0 and j == nrb:
                if updown:
                    e += _res(f"output_blocks.{idx}.{k}", f"up_blocks.{i}.upsamplers.0")
                else:
                    e += plain(f"output_blocks.{idx}.{k}.conv", f"up_blocks.{i}.upsamplers.0.conv")
            idx += 1
    e += plain("out.0", "conv_norm_out") + plain("out.2", "conv_out")
    return e


# -- the other way: a diffusers UNet as a CompVis config ----------------------------------

def compvis_params(unet) -> CompVisUNet:
    """The CompVis config of a diffusers UNet, or one error listing what CompVis cannot express."""
    from ..models.unet import head_counts

    c = unet.config
    problems = []
    ch = list(c.block_out_channels)
    mult = [x // ch[0] for x in ch]
    if any(x % ch[0] for x in ch):
        problems.append(f"block_out_channels {ch} are not multiples of the first")
    n = len(ch)
    attn_down = [t.startswith("Attn") for t in c.down_block_types]
    attn_up = [t.startswith("Attn") for t in c.up_block_types]
    if attn_up != attn_down[::-1]:
        problems.append("attention in the down and up blocks is not symmetric")
    updown = c.downsample_type == "resnet"
    if (c.upsample_type == "resnet") != updown:
        problems.append("down and up sampling are not both resnet (or both conv)")
    checks = {"norm_num_groups": GROUPS, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
              "time_embedding_type": "positional", "act_fn": "silu", "center_input_sample": False,
              "downsample_padding": 1, "mid_block_scale_factor": 1, "class_embed_type": None,
              "num_class_embeds": None, "time_embedding_dim": None, "add_attention": True,
              "mid_block_type": "UNetMidBlock2D"}
    for key, want in checks.items():
        if c.get(key, want) != want:
            problems.append(f"{key} is {c.get(key)!r}; CompVis has {want!r}")
    if unet.mid_block.attentions[0].group_norm is None:
        problems.append("the middle attention block has no group norm (set attn_norm_num_groups); CompVis always has one")
    heads = head_counts(unet)
    blk = ch + [ch[-1]] + ch[::-1]
    dims = {b // h for b, h in zip(blk, heads) if h}
    counts = {h for h in heads if h}
    head_channels, num_heads = -1, -1
    if len(dims) == 1:
        head_channels = dims.pop()
    elif len(counts) == 1:
        num_heads = counts.pop()
    else:
        problems.append(f"attention heads per block {heads} are neither one head size nor one head count")
    if problems:
        raise HistodiffError("this UNet cannot be written in the CompVis layout: " + "; ".join(problems))
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    return CompVisUNet(
        image_size=size, in_channels=c.in_channels, out_channels=c.out_channels, model_channels=ch[0],
        channel_mult=tuple(mult), num_res_blocks=c.layers_per_block,
        attention_resolutions=tuple(2 ** i for i in range(n) if attn_down[i]), num_heads=num_heads,
        num_head_channels=head_channels, use_scale_shift_norm=c.resnet_time_scale_shift == "scale_shift",
        resblock_updown=updown, dropout=c.dropout,
    )
