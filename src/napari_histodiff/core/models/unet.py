"""``HistodiffUNet2DModel``: diffusers ``UNet2DModel`` with a head count per attention block.

``UNet2DModel`` has one attention head size for the whole network. The CompVis / HistoDiffusion
UNet with ``num_heads: 8`` has 8 heads at every level, so the head size changes with the
channels. The extra config field ``attention_heads`` lists the number of heads of every block,
in module order: the down blocks, the mid block, then the up blocks (entries of blocks without
attention are ignored). Everything else is ``UNet2DModel``: same weights, same forward.
"""

from __future__ import annotations

from diffusers import UNet2DModel
from diffusers.configuration_utils import register_to_config


class HistodiffUNet2DModel(UNet2DModel):
    @register_to_config
    def __init__(
        self,
        sample_size=None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim=None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        mid_block_type="UNetMidBlock2D",
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim=None,
        norm_num_groups: int = 32,
        attn_norm_num_groups=None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type=None,
        num_class_embeds=None,
        num_train_timesteps=None,
        attention_heads=None,
    ):
        kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__", "attention_heads")}
        super().__init__.__wrapped__(self, **kwargs)  # the parent's body; the config is registered above
        if attention_heads is not None:
            set_attention_heads(self, attention_heads)


def attention_blocks(unet) -> list[list]:
    """The attention modules of each block in module order (down blocks, mid block, up blocks)."""
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return [list(getattr(b, "attentions", None) or []) for b in blocks]


def set_attention_heads(unet, heads) -> None:
    """Give every attention module of block ``i`` ``heads[i]`` heads (head size = channels / heads)."""
    from ..base.errors import HistodiffError

    per_block = attention_blocks(unet)
    if len(heads) != len(per_block):
        raise HistodiffError(f"attention_heads needs {len(per_block)} entries (down blocks, mid block, up blocks), "
                             f"got {len(heads)}")
    for i, (attns, n) in enumerate(zip(per_block, heads)):
        for attn in attns:
            channels = attn.inner_dim
            if not n or channels % int(n):
                raise HistodiffError(f"block {i}: {channels} channels cannot be split into {n} attention heads")
            attn.heads = attn.sliceable_head_dim = int(n)
            attn.scale = (channels // int(n)) ** -0.5


def head_counts(unet) -> list[int]:
    """Heads of each block in module order (0 for blocks without attention)."""
    return [attns[0].heads if attns else 0 for attns in attention_blocks(unet)]


def unet_class(name: str | None):
    """The UNet class named by a config's ``_class_name``."""
    from ..base.errors import BundleError

    if name in (None, "UNet2DModel"):
        return UNet2DModel
    if name == "HistodiffUNet2DModel":
        return HistodiffUNet2DModel
    raise BundleError(f"unknown UNet class {name!r} in unet/config.json; expected UNet2DModel or HistodiffUNet2DModel")
