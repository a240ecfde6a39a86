"""Pieces shared by the training loops: deterministic batches, checkpoints, accelerate set-up.

Every random draw of step ``k`` on process ``r`` comes from a generator seeded by
``(seed, k, r)``, so a resumed run repeats the uninterrupted run's losses exactly without
saving any RNG state.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..base.errors import HistodiffError
from ..base.disk import DiskFull, is_disk_full
from ..formats.integrity import sha256_file
from ..models.pixels import to_model_input, to_uint8  # noqa: F401 (used by the loops)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def torch_generator(seed: int, step: int, rank: int = 0):
    import torch

    return torch.Generator().manual_seed(step_seed(seed, step, rank))


def dihedral(tile: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/90-degree rotations of an HWC tile."""
    out = np.rot90(tile, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


class BatchStream:
    """A map-style dataset whose item ``k`` is the uint8 NHWC batch for training step ``k``.

    Epochs are seeded permutations of ``indices``; processes take interleaved batches. Unlabelled
    tiles in several shards or slides (``tiles.groups()``, at least one per process) are split
    instead: each process reads only its own share (groups ``g`` with ``g % world == rank``).
    With ``latents`` (a :class:`latents.LatentCache` of ``indices``) item ``k`` is the cached posterior
    ``(mean, std)`` of the same tiles in the same augmentations instead of their pixels.
    """

    def __init__(self, tiles, indices, batch_size, seed, rank=0, world=1, augment=True, labels=None):
        self.tiles, self.indices = tiles, np.asarray(indices)
        self.labels = None if labels is None else np.asarray(labels)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.augment = augment
        self.latents = None
        self.own = False
        groups = tiles.groups() if world > 1 and labels is None and hasattr(tiles, "groups") else None
        if groups is not None and len(np.unique(groups[self.indices])) >= world:
            mine = self.indices[groups[self.indices] % world == rank]
            if len(mine):
                self.indices, self.own = mine, True

    def __len__(self):
        return 2**62

    def _perm(self, epoch):
        key = [self.seed, epoch, 7] + ([self.rank] if self.own else [])
        return np.random.default_rng(key).permutation(len(self.indices))

    def positions(self, step: int) -> np.ndarray:
        n = len(self.indices)
        slot = step if self.own else step * self.world + self.rank
        pos = slot * self.batch_size + np.arange(self.batch_size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(pos // n):
            sel = pos // n == epoch
            out[sel] = self.indices[self._perm(int(epoch))[pos[sel] % n]]
        return out

    def __getitem__(self, step: int):
        import torch

        pos = self.positions(step)
        ks = np.random.default_rng(step_seed(self.seed, step, self.rank)).integers(0, 8, len(pos)) \
            if self.augment else np.zeros(len(pos), dtype=np.int64)
        if self.latents is not None:
            batch = self.latents.get(pos, ks)
        else:
            tiles = [dihedral(self.tiles[int(i)], int(k)) for i, k in zip(pos, ks)]
            batch = torch.from_numpy(np.ascontiguousarray(np.stack(tiles)))
        return batch if self.labels is None else (batch, torch.from_numpy(self.labels[pos]))


def ignore_interrupt(_worker_id=None) -> None:
    """A DataLoader worker ignores Ctrl-C: the terminal sends SIGINT to every process of the job, and the
    main process stops the workers itself; a worker interrupted inside a reader printed that reader's
    traceback (imageio's half-opened plugin) after the one-line "interrupted" message."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def batch_loader(stream: BatchStream, start: int, stop: int, num_workers: int = 0, pin_memory: bool = False):
    """Iterate the batches of steps ``start..stop-1`` (optionally read by worker processes; pinned for CUDA)."""
    from torch.utils.data import DataLoader

    return DataLoader(
        stream, batch_size=None, sampler=range(start, stop), num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None, worker_init_fn=ignore_interrupt if num_workers else None,
    )


def make_accelerator(device: str | None = "auto", precision: str = "auto"):
    """An ``Accelerator`` on the chosen device, in the precision ``precision`` resolves to there
    (``auto``, ``fp32``/``no``, ``bf16``, ``fp16``: :func:`..base.precision.resolve_precision`).

    Under a launcher (``accelerate launch --multi_gpu``, ``torchrun``) the launcher places the
    processes; with ``--device cpu`` or without CUDA they run on the CPU over gloo.
    """
    import torch
    from accelerate import Accelerator

    from ..base.devices import launcher_cpu, pick_device
    from ..base.precision import accelerate_precision, resolve_precision

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cpu = launcher_cpu(device)
        mixed = accelerate_precision(resolve_precision(precision, "cpu" if cpu else "cuda", "train"))
        return Accelerator(cpu=cpu, mixed_precision=mixed)
    reset_accelerate()
    dev = pick_device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev.index)
    mixed = accelerate_precision(resolve_precision(precision, dev, "train"))
    return Accelerator(cpu=dev.type == "cpu", mixed_precision=mixed)


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state, so each job in one process (napari) gets the device and
    precision it asks for (not those of the job before). Single-process runs only."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def prepare_out_dir(out, intent: str = "new") -> Path:
    """The bundle folder a training run writes, created. ``intent``: ``new`` (must not exist or be empty),
    ``resume`` (continue our bundle or training checkpoint there) or ``overwrite`` (replace our bundle);
    a folder that is not our bundle is refused untouched (:mod:`..base.outdir`)."""
    from ..base.outdir import prepare_output

    return prepare_output(out, "bundle", intent, allowed=("new", "resume", "overwrite"))


# -- checkpoints -------------------------------------------------------------------------------
# A stage's checkpoints are ``training/STAGE/step-NNNNNNNN/`` folders, each written in a hidden
# sibling and renamed into place, with the size and sha256 of every file in ``checkpoint.json``.
# The newest two are kept: a damaged newest one (disk full, killed mid-write, truncated copy) is
# detected and the previous one is used, with a warning.

KEEP = 2


def checkpoints(folder: Path) -> list[Path]:
    """A stage's checkpoint folders, newest first (a checkpoint of the old single-folder layout last)."""
    folder = Path(folder)
    found = sorted(folder.glob("step-*"), reverse=True) if folder.is_dir() else []
    found = [p for p in found if p.is_dir() and p.name[5:].isdigit()]
    return found + ([folder] if (folder / "checkpoint.json").is_file() else [])


def save_checkpoint(folder: Path, models: dict, state: dict, info: dict) -> Path:
    """Models as safetensors, optimiser/EMA state as tensors-only ``state.pt``, checksums in
    ``checkpoint.json``; written whole or not at all. Older checkpoints beyond :data:`KEEP` are removed."""
    import torch
    from safetensors.torch import save_model

    folder = Path(folder)
    final = folder / f"step-{int(info['step']):08d}"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, model in models.items():
            save_model(model, str(tmp / f"{name}.safetensors"))
        torch.save(state, tmp / "state.pt")
        files = {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)} for f in sorted(tmp.iterdir())}
        (tmp / "checkpoint.json").write_text(json.dumps({**info, "files": files}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except Exception as e:  # noqa: BLE001 - a full disk from torch (RuntimeError) or safetensors too
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):  # training jobs all accept resume
            raise DiskFull.build(final, checkpoint_bytes(models, state), intents=("resume",),
                                 what=f"the checkpoint {final}") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints(folder)[KEEP:]:
        if old == folder:  # the old layout's files, superseded
            for f in ("checkpoint.json", "state.pt", *(p.name for p in folder.glob("*.safetensors"))):
                (folder / f).unlink(missing_ok=True)
        else:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_bytes(models: dict, state) -> int:
    """About the bytes a checkpoint of ``models`` and ``state`` (nested tensors) takes on disk."""
    def tensors(obj):
        if hasattr(obj, "element_size") and hasattr(obj, "numel"):
            return obj.element_size() * obj.numel()
        if isinstance(obj, dict):
            return sum(tensors(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(tensors(v) for v in obj)
        return 0

    return sum(tensors(m.state_dict()) for m in models.values()) + tensors(state)


def check_checkpoint(folder: Path) -> dict:
    """``checkpoint.json`` of a checkpoint folder after checking every file's size and checksum;
    raises ``ValueError`` naming what is damaged."""
    folder = Path(folder)
    try:
        info = json.loads((folder / "checkpoint.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint.json is missing or unreadable ({e})") from None
    for name, rec in (info.get("files") or {}).items():
        f = folder / name
        if not f.is_file():
            raise ValueError(f"{name} is missing")
        if f.stat().st_size != rec["size"]:
            raise ValueError(f"{name} is {f.stat().st_size} bytes, {rec['size']} were written")
        if sha256_file(f) != rec["sha256"]:
            raise ValueError(f"{name} differs from what was written (checksum)")
    return info


def load_checkpoint(folder: Path, models: dict) -> tuple[dict, dict]:
    """Load the newest intact checkpoint of a stage into ``models`` in place; return ``(state, info)``.
    ``info["warnings"]`` lists damaged newer checkpoints that were skipped. Nothing is unpickled unsafely."""
    import torch
    from safetensors.torch import load_model

    skipped = []
    for ckpt in checkpoints(folder):
        try:
            info = check_checkpoint(ckpt)
            for name, model in models.items():
                load_model(model, str(ckpt / f"{name}.safetensors"))
            state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            skipped.append(f"checkpoint {ckpt} is damaged ({e})")
            continue
        info["warnings"] = [f"{s}; resumed from the previous checkpoint, at step {info['step']}" for s in skipped]
        return state, info
    raise HistodiffError(
        f"cannot resume from the checkpoints in {folder}: " + "; ".join(skipped) +
        ". Start the stage again with {opt:intent=overwrite}"
    )


class Checkpointer:
    """Saves a stage's checkpoint (main process only) when the step moved since the last save.

    ``contents()`` returns ``(models, state, info)`` for :func:`save_checkpoint` at call time. After a
    failed save (disk full), the save on the way out is not tried again.
    """

    def __init__(self, folder: Path, acc, start: int, contents):
        self.folder, self.acc, self.saved, self.contents = folder, acc, start, contents
        self.failed = False

    def save(self, step: int) -> None:
        if self.acc.is_main_process and step > self.saved and not self.failed:
            models, state, info = self.contents()
            try:
                save_checkpoint(self.folder, models, state, {"step": step, **info})
            except BaseException:
                self.failed = True
                raise
        self.saved = step


def check_resume(info: dict, steps: int) -> None:
    """Refuse a target below the checkpoint's step (it would silently count as finished)."""
    if info["step"] > steps:
        raise HistodiffError(
            f"the {info.get('stage', 'training')} checkpoint is at step {info['step']}, beyond the "
            f"requested {steps} steps; pass {{opt:steps={info['step']}}} or more to continue it"
        )


def stage_written(out_dir, stage: str, step: int) -> bool:
    """Whether the bundle already holds the outputs of ``stage`` at ``step`` (so a resume has nothing to do)."""
    from ..formats.bundle import read_meta

    try:
        return read_meta(out_dir).get("provenance", {}).get(stage, {}).get("steps") == step
    except HistodiffError:
        return False


def stratified_split(labels, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out indices with ``holdout`` of every class held out (at least one when it has 2+)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 11])
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(idx) - 1, max(1, round(holdout * len(idx)))) if holdout > 0 and len(idx) > 1 else 0
        held += idx[:k].tolist()
        train += idx[k:].tolist()
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def stratified_folds(labels, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, held-out) index pairs; every tile is held out in exactly one fold, and every class
    is spread evenly over the folds."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 13])
    fold = np.empty(len(labels), dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = (start + np.arange(len(idx))) % k  # a class smaller than k continues where the last ended
        start += len(idx)
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def fused(device) -> dict:
    """``fused=True`` for torch's Adam / AdamW on CPU and CUDA: the same update in fewer kernels
    (benchmarks/train_speed.py; 1.06x a diffusion step, 1.08x an autoencoder step here)."""
    import torch

    return {"fused": True} if torch.device(device).type in ("cpu", "cuda") else {}


def given(value, default):
    """``value`` unless it is None (0 is a valid choice)."""
    return default if value is None else value


def has_checkpoint(folder: Path) -> bool:
    return bool(checkpoints(folder))
