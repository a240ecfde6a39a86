"""The guided-diffusion / HistoDiffusion latent classifier (``EncoderUNetModel`` state dict ``.pt``).

Our :class:`classifiers.LatentClassifier` pools with diffusers ``AttentionPooling``, which adds a
learned embedding to the pooled token only. ``EncoderUNetModel``'s ``AttentionPool2d`` adds one to
every spatial position as well, so a trained classifier of that kind cannot be computed exactly by
ours; other pools (adaptive, spatial) differ more. This module recognises such a file and says
precisely what differs, instead of loading an approximation.
"""

from __future__ import annotations

import re

from ..base.errors import HistodiffError

POOLS = {"out.2.positional_embedding": "attention", "out.3.weight": "adaptive", "out.0.weight": "spatial"}


def is_encoder_unet(sd: dict) -> bool:
    return (any(k.startswith("input_blocks.") for k in sd) and any(k.startswith("out.") for k in sd)
            and not any(k.startswith("output_blocks.") for k in sd))


def describe(sd: dict) -> dict:
    """Structure of an ``EncoderUNetModel`` state dict, read from its keys and shapes."""
    pool = next((name for key, name in POOLS.items() if key in sd), "unknown")
    ch = sd["input_blocks.0.0.weight"].shape[0] if "input_blocks.0.0.weight" in sd else None
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    down_res = [i for i in blocks if f"input_blocks.{i}.0.in_layers.0.weight" in sd
                and f"input_blocks.{i}.0.op.weight" not in sd]
    first = f"input_blocks.{down_res[0]}.0" if down_res else None
    emb = sd.get(f"{first}.emb_layers.1.weight") if first else None
    conv = sd.get(f"{first}.in_layers.2.weight") if first else None
    out = {"pool": pool, "model_channels": ch, "input_blocks": len(blocks),
           "resblock_updown": len(blocks) > 2 and not any(f"input_blocks.{i}.0.op.weight" in sd for i in blocks),
           "scale_shift_norm": emb is not None and conv is not None and emb.shape[0] == 2 * conv.shape[0]}
    if pool == "attention":
        pos = sd["out.2.positional_embedding"]
        out["pool_positions"] = pos.shape[1] - 1
        out["spatial_embedding_max"] = float(pos[:, 1:].abs().max()) if pos.shape[1] > 1 else 0.0
        out["num_classes"] = sd["out.2.c_proj.weight"].shape[0] if "out.2.c_proj.weight" in sd else None
    return out


def refuse(path, sd: dict) -> HistodiffError:
    """One message that says what the classifier is and why our LatentClassifier cannot hold it exactly."""
    d = describe(sd)
    reasons = []
    if d["pool"] == "attention":
        if d["spatial_embedding_max"] > 0:
            reasons.append(f"its attention pool adds a learned embedding to each of the {d['pool_positions']} latent "
                           "positions; ours (diffusers AttentionPooling) adds one to the pooled token only")
    else:
        reasons.append(f"it pools with the {d['pool']!r} head; ours pools with attention")
    if d["resblock_updown"]:
        reasons.append("it down-samples with residual blocks (resblock_updown); ours with strided convolutions")
    if d["scale_shift_norm"]:
        reasons.append("its middle attention block has a group norm under scale-shift norm; ours has none there")
    if not reasons:
        reasons.append("its key layout is not one this converter maps")
    classes = f", {d['num_classes']} classes" if d.get("num_classes") else ""
    return HistodiffError(
        f"{path} is a guided-diffusion EncoderUNetModel latent classifier ({d['pool']} pool, "
        f"{d['model_channels']} channels, {d['input_blocks']} input blocks{classes}), and napari-histodiff's "
        f"LatentClassifier cannot compute it exactly: {'; '.join(reasons)}. It was not converted, rather than "
        "loaded as an approximation. Train a latent classifier for the converted model with `histodiff finetune` "
        "(it trains on noised latents, as guidance needs).")
