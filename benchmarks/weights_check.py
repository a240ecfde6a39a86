"""What checking a bundle's weights before use costs (prints figures).

    python benchmarks/weights_check.py [--preset paper]

``histodiff sample`` and ``select`` hash every part of a bundle folder (sha256 against files.json) before
loading it, as ``histodiff info`` does, and skip files verified before and unchanged since. This saves the
preset's autoencoder and diffusion UNet with random weights in a temporary folder, then times, on a warm
page cache, the first check, a second check (the cache), and the load that follows (``from_pretrained`` of
both parts on the CPU). The cache of verified files is kept in the temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="paper")
    args = ap.parse_args(argv)
    import torch

    import os

    from napari_histodiff.core.formats.bundle import _class_name, _load_part, save_part, vae_class
    from napari_histodiff.core.formats.integrity import damaged_parts
    from napari_histodiff.core.models.presets import get_preset
    from napari_histodiff.core.models.unet import unet_class

    torch.set_num_threads(1)
    preset = get_preset(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir()
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        for name, model in (("vae", preset.build_vae()), ("unet", preset.build_unet())):
            save_part(model, root, name)
            del model
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        for f in root.rglob("*.safetensors"):  # warm the page cache, as a load just before would
            f.read_bytes()
        t = time.perf_counter()
        assert not damaged_parts(root)
        check = time.perf_counter() - t
        t = time.perf_counter()
        assert not damaged_parts(root)
        again = time.perf_counter() - t
        t = time.perf_counter()
        _load_part(vae_class(root / "vae"), root / "vae", "autoencoder")
        _load_part(unet_class(_class_name(root / "unet")), root / "unet", "diffusion UNet")
        load = time.perf_counter() - t
    print(f"preset {args.preset}: {size / 1e9:.2f} GB of weights")
    print(f"first check (sha256) {check:.2f} s ({size / 1e6 / check:.0f} MB/s); again, cached: {again * 1e3:.1f} ms; "
          f"load {load:.2f} s; first check / load {check / load:.2f}")


if __name__ == "__main__":
    main()
