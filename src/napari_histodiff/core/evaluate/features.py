"""The audit's feature space, trained on the user's own real tiles: contrastive (SimCLR's InfoNCE loss)
between two random copies (:mod:`.copies`) of each tile, so that copies land close together and other
tiles apart. Nothing is downloaded. Saved as ``config.json`` + safetensors + ``features.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..base.errors import HistodiffError
from ..base.events import Progress

FEATURES_JSON = "features.json"  # how the encoder was trained
TEMPERATURE = 0.1


def info_nce(z, temperature: float = TEMPERATURE):
    """SimCLR's NT-Xent loss of unit embeddings ``z`` (2B, D): rows i and i + B are two views of one tile."""
    import torch
    import torch.nn.functional as F

    n = len(z) // 2
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, target)


def train_encoder(tiles: np.ndarray, steps: int, batch: int, seed: int = 0, device: str = "cpu",
                  lr: float = 2e-3):
    """Train a :class:`CopyEncoder` on uint8 (N, S, S, 3) ``tiles``; yields progress, returns (encoder, info)."""
    import torch

    from ..models.copy_encoder import CopyEncoder
    from .copies import copy_batch, from_uint8

    if len(tiles) < 2:
        raise HistodiffError(f"the audit's feature encoder needs at least 2 real tiles to learn from (got {len(tiles)}); "
                             "give more real tiles")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = CopyEncoder(tile_size=tiles.shape[1]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    batch = min(batch, len(tiles))
    start, losses = time.perf_counter(), []
    for step in range(steps):
        idx = torch.randperm(len(tiles), generator=gen)[:batch].numpy()
        x = from_uint8(tiles[np.sort(idx)])
        views = torch.cat([copy_batch(x, gen), copy_batch(x, gen)]).to(device)
        loss = info_nce(model(views))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        yield Progress("feature encoder", step + 1, steps, loss=losses[-1])
    model.eval()
    info = {"trained_on_tiles": int(len(tiles)), "tile_size": int(tiles.shape[1]), "steps": int(steps),
            "batch": int(batch), "learning_rate": lr, "temperature": TEMPERATURE, "seed": int(seed),
            "final_loss": float(np.mean(losses[-20:])), "training_seconds": round(time.perf_counter() - start, 2),
            "device": str(device), "method": "SimCLR InfoNCE between two random copies of each real tile "
            "(flips / 90-degree rotations, HED stain jitter, crop to 85-100% of the side resized back, "
            "translation, mild blur, JPEG)"}
    return model, info


def embed(model, tiles: np.ndarray, device: str = "cpu", batch: int = 256) -> np.ndarray:
    """Unit-length float32 embeddings (N, D) of uint8 (N, S, S, 3) tiles."""
    import torch

    from .copies import from_uint8

    out = []
    with torch.inference_mode():
        for i in range(0, len(tiles), batch):
            out.append(model(from_uint8(tiles[i : i + batch]).to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.dim), np.float32)


def save_encoder(model, folder, info: dict) -> None:
    folder = Path(folder)
    model.save_pretrained(folder)
    (folder / FEATURES_JSON).write_text(json.dumps(info, indent=2), encoding="utf-8")


def features_folder(path) -> Path:
    """The encoder folder that ``path`` names: itself, or the ``features/`` folder of an audit."""
    path = Path(path)
    for cand in (path, path / "features"):
        if (cand / "config.json").is_file() and any(cand.glob("*.safetensors")):
            return cand
    raise HistodiffError(f"{path} holds no audit feature encoder (config.json + .safetensors, or an audit folder "
                         "with features/); give the folder of an earlier audit, or leave out {opt:features} to "
                         "train one")


def load_encoder(path, device: str = "cpu"):
    """(encoder, info) from a features folder or an audit folder."""
    from ..models.copy_encoder import CopyEncoder

    folder = features_folder(path)
    try:
        model = CopyEncoder.from_pretrained(folder).to(device).eval()
    except Exception as e:  # noqa: BLE001 - a damaged or foreign folder, named for the user
        raise HistodiffError(f"cannot load the audit feature encoder in {folder} ({type(e).__name__}: {e}); "
                             "train a new one by leaving out {opt:features}") from e
    try:
        info = json.loads((folder / FEATURES_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    return model, {**info, "loaded_from": str(folder)}
