"""Latents of the frozen autoencoder, encoded once per tile and dihedral augmentation.

Diffusion training, UNet fine-tuning and the noisy latent classifier train on latents of a frozen
KL autoencoder. Instead of encoding every batch again, each training tile is encoded once in each
of the 8 flips/rotations the batches use (:func:`loop.dihedral`), and the posterior's mean and std
(``DiagonalGaussianDistribution``) are kept. Each step then draws its latent
``mean + std * eps`` with the step's own generator, exactly as it did from a fresh encoding, so
the method and the random stream are unchanged; only the batch composition of the encoder calls
differs (float noise).

The cache lives in memory up to :data:`MEMORY_LIMIT` bytes (environment variable
``HISTODIFF_LATENT_CACHE_BYTES``), and beyond it as ``.npy`` shards under the stage's
``training/STAGE/latents-rankR/`` folder, created for the run and removed at its end (a killed run's
folder is replaced on resume); their disk space is reserved when they are created, so a full disk
is named then, not a crash (SIGBUS) at a later write to the memory map. Encoding is chunked the same
way on every run, so a resumed run reads the same bits.

Whether to cache at all (``latent_cache="auto"``): only when the run would encode more tiles step
by step (``steps x batch``) than the cache does (``8 x tiles``); a short run on a large set keeps
encoding each batch.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np

from ..base.errors import HistodiffError

AUGMENTATIONS = 8  # the dihedral group: loop.dihedral(tile, k), k = 0..7
MEMORY_LIMIT = 2 * 2**30  # bytes of cached mean + std held in memory; larger caches go to disk
SHARD_TILES = 2048  # tiles per .npy shard on disk
ENCODE_TILES = 4  # tiles per encoder call (x 8 augmentations) on the CPU; fixed so every run computes the same bits
ENCODE_TILES_CUDA = 32  # on a GPU: 256 images per call (a 64 px tile's activations in the small preset: ~1 MB)
MODES = ("auto", "on", "off")


def encode_tiles(device) -> int:
    """Tiles per encoder call on ``device`` (each in 8 augmentations): fixed per kind of device, so a run
    resumed on the same kind of device reads the same bits."""
    return ENCODE_TILES_CUDA if str(getattr(device, "type", device)).startswith("cuda") else ENCODE_TILES


def memory_limit() -> int:
    env = os.environ.get("HISTODIFF_LATENT_CACHE_BYTES")
    return int(env) if env else MEMORY_LIMIT


def wanted(mode: str, steps: int, batch: int, n_tiles: int) -> bool:
    """Whether a run of ``steps`` x ``batch`` over ``n_tiles`` tiles should encode once (see module doc).
    Decided from the run's total steps, never the remaining ones, so a resumed run takes the same path."""
    if mode not in MODES:
        raise HistodiffError(f"latent_cache must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "auto":
        return mode == "on"
    return steps * batch >= AUGMENTATIONS * n_tiles


def cache_bytes(n_tiles: int, latent_shape) -> int:
    """Bytes of the cached mean and std (float32) of ``n_tiles`` tiles in 8 augmentations."""
    return int(n_tiles) * AUGMENTATIONS * 2 * int(np.prod(latent_shape)) * 4


class LatentCache:
    """Posterior mean and std, float32 ``(tiles, 8, C, h, w)``, of the tiles ``indices`` (tile-set
    indices). In memory (one shard) or as ``.npy`` shards in ``folder``."""

    def __init__(self, indices, latent_shape, folder: Path | None = None):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.lookup = np.full(int(self.indices.max()) + 1 if len(self.indices) else 0, -1, dtype=np.int64)
        self.lookup[self.indices] = np.arange(len(self.indices))
        self.folder = None if folder is None else Path(folder)
        n = len(self.indices)
        self.shard = SHARD_TILES if self.folder else max(n, 1)
        self._arrays = None
        if self.folder is None:
            self._arrays = [tuple(np.empty((n, AUGMENTATIONS, *self.latent_shape), np.float32) for _ in range(2))]
        else:
            self._arrays = self._create_shards(n)

    def _create_shards(self, n: int) -> list:
        """The shards as memory maps whose disk space is reserved first: a memory map written on a full
        disk kills the process (SIGBUS) instead of raising an error."""
        from numpy.lib.format import open_memmap

        from ..base.disk import DiskFull, free_bytes, is_disk_full

        needed = cache_bytes(n, self.latent_shape)
        shutil.rmtree(self.folder, ignore_errors=True)  # a killed run's shards
        arrays = []
        try:
            self.folder.mkdir(parents=True)
            if free_bytes(self.folder) < needed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.folder))
            for s, lo in enumerate(range(0, n, self.shard)):
                rows = min(self.shard, n - lo)
                pair = []
                for part in ("mean", "std"):
                    path = self.folder / f"{part}-{s:06d}.npy"
                    pair.append(open_memmap(path, mode="w+", dtype=np.float32,
                                            shape=(rows, AUGMENTATIONS, *self.latent_shape)))
                    _reserve(path)
                arrays.append(tuple(pair))
        except Exception as e:  # noqa: BLE001
            arrays.clear()
            shutil.rmtree(self.folder, ignore_errors=True)
            if is_disk_full(e):  # training jobs all accept resume
                raise DiskFull.build(self.folder, needed, intents=("resume",),
                                     what=f"the latent cache {self.folder}") from None
            raise
        return arrays

    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    def __len__(self):
        return len(self.indices)

    def write(self, row: int, mean: np.ndarray, std: np.ndarray) -> None:
        """Rows ``row..`` (whole tiles: ``mean`` is ``(tiles, 8, C, h, w)``)."""
        for i in range(len(mean)):
            s, r = divmod(row + i, self.shard)
            self._arrays[s][0][r] = mean[i]
            self._arrays[s][1][r] = std[i]

    def finish(self) -> None:
        """Flush the shards and reopen them read-only (memory-mapped)."""
        if self.on_disk:
            for m, s in self._arrays:
                m.flush()
                s.flush()
            self._arrays = None

    def _shards(self):
        if self._arrays is None:
            files = sorted(self.folder.glob("mean-*.npy"))
            self._arrays = [(np.load(f, mmap_mode="r"), np.load(f.with_name("std" + f.name[4:]), mmap_mode="r"))
                            for f in files]
        return self._arrays

    def __getstate__(self):  # DataLoader workers: memory maps are reopened, not copied
        state = dict(self.__dict__)
        if self.on_disk:
            state["_arrays"] = None
        return state

    def get(self, positions, ks):
        """``(mean, std)`` float32 tensors ``(B, C, h, w)`` of tiles ``positions`` in augmentations ``ks``."""
        import torch

        rows = self.lookup[np.asarray(positions)]
        if (rows < 0).any():
            raise HistodiffError("a training tile is missing from the latent cache")
        ks = np.asarray(ks, dtype=np.int64)
        out = [np.empty((len(rows), *self.latent_shape), np.float32) for _ in range(2)]
        shards = self._shards()
        for s in np.unique(rows // self.shard):
            sel = rows // self.shard == s
            for part in range(2):
                out[part][sel] = shards[s][part][rows[sel] % self.shard, ks[sel]]
        return torch.from_numpy(out[0]), torch.from_numpy(out[1])

    def close(self) -> None:
        """Remove the shards from disk (memory caches: nothing to do)."""
        self._arrays = None
        if self.on_disk:
            shutil.rmtree(self.folder, ignore_errors=True)


def _reserve(path: Path) -> None:
    """Allocate the whole file on disk now (``ENOSPC`` here, not a crash at a later write)."""
    if not hasattr(os, "posix_fallocate"):
        return  # the free-space check before is all there is (macOS, Windows)
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return  # a file system without it
            raise


def encode_all(vae, tiles, indices, device, folder: Path, progress_stage: str = "latents"):
    """Encode tiles ``indices`` in their 8 augmentations with the frozen ``vae`` (float32); a generator
    that yields :class:`Progress` (stage ``progress_stage``) and returns the :class:`LatentCache`.
    ``folder``: where the shards go if the cache exceeds :func:`memory_limit`."""
    import torch

    from ..base.events import Progress
    from .loop import dihedral, to_model_input

    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    cache = None
    per_call = encode_tiles(device)
    every = max(1, n // (20 * per_call)) * per_call  # about 20 progress events
    try:
        for lo in range(0, n, per_call):
            chunk = indices[lo : lo + per_call]
            x = np.stack([dihedral(tiles[int(i)], k) for i in chunk for k in range(AUGMENTATIONS)])
            with torch.inference_mode():
                post = vae.encode(to_model_input(torch.from_numpy(np.ascontiguousarray(x)), device)).latent_dist
                mean, std = post.mean.float().cpu().numpy(), post.std.float().cpu().numpy()
            shape = mean.shape[1:]
            if cache is None:
                disk = cache_bytes(n, shape) > memory_limit()
                cache = LatentCache(indices, shape, folder if disk else None)
            cache.write(lo, mean.reshape(len(chunk), AUGMENTATIONS, *shape), std.reshape(len(chunk), AUGMENTATIONS, *shape))
            done = min(lo + per_call, n)
            if done % every == 0 or done == n:
                where = f"{folder}" if cache.on_disk else "memory"
                yield Progress(progress_stage, done, n, message=f"latents of {n} tiles x 8 augmentations "
                               f"encoded once ({cache_bytes(n, shape) / 2**20:.0f} MiB in {where})")
        cache.finish()
    except BaseException:
        if cache is not None:
            cache.close()
        raise
    return cache
