"""The recipe of the built-in H&E starter model ``he-starter`` (issue 29, item 4), as one command:

    OMP_NUM_THREADS=2 python benchmarks/he_starter.py --data ../shared/data --work he-starter-work [--ship]
    python benchmarks/he_starter.py --data ../shared/data --work he-starter-gpu --profile gpu --ship
    python benchmarks/he_starter.py --data ../shared/data --work /tmp/t --profile tiny     # seconds: tests

It cuts the 41 crc_mini tiles (224 px at 0.5 um/px; NCT-CRC-HE-100K / CRC-VAL-HE-7K, Kather JN et al.
2019, CC BY 4.0, Zenodo 10.5281/zenodo.1214456) into 64 px tiles at their native scale (stride 16), trains
the autoencoder, then the diffusion UNet (the `histodiff pretrain-autoencoder` and `histodiff pretrain`
jobs) with the `small` preset and a smaller UNet, so that the float16 copy fits in 20 MB. It prints the
CPU minutes of each stage (summed over re-runs) and the size of the compact copy (``WORK/he_starter``);
``--ship`` writes that copy into the package (src/napari_histodiff/models/he_starter/). Running it again
with the same --work resumes from the checkpoints there (another profile or --set needs a new --work).
Every tile is kept (no tissue filter): the set is curated tissue, and its one background tile (BACK) is
the background users' slides have too. The crc_mini set is the only colon H&E set in
../shared/data whose licence allows redistributing weights derived from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

AE_STEPS, AE_BATCH = 1000, 8  # the CPU profile (the GPU profile runs GPU_FACTOR times more steps)
LDM_STEPS, LDM_BATCH = 3000, 16
GPU_FACTOR = 10
TINY_STEPS, TINY_BATCH = 3, 4
UNET_CHANNELS = (64, 64, 96)  # the small preset's UNet is (96, 192, 192), 18 M parameters: too big to ship
STRIDE, MPP = 16, 0.5
LIMIT_MB, TARGET_MB = 20.0, 19.0
NAME = "he-starter"
WHAT = ("{px} px tiles of H&E-stained colorectal tissue at 0.5 um/px ({um:.0f} um across): a KL autoencoder and "
        "an unconditional latent diffusion UNet to fine-tune on your own classes; not a general-purpose or "
        "high-resolution model")
LICENCE = "CC BY 4.0 (the licence of the training tiles, whose terms these derived weights follow)"
ATTRIBUTION = ("Kather JN, Halama N, Marx A. 100,000 histological images of human colorectal cancer and healthy "
               "tissue (NCT-CRC-HE-100K, CRC-VAL-HE-7K). Zenodo 2018, doi:10.5281/zenodo.1214456. Kather JN et "
               "al., PLOS Medicine 16(1): e1002730, 2019")


def profile_settings(profile: str) -> dict:
    """Preset, step counts, batches and device of a profile."""
    from napari_histodiff.core.models.presets import small, tiny

    if profile == "tiny":
        preset = tiny()
        return dict(preset=preset, ae=(TINY_STEPS, TINY_BATCH), ldm=(TINY_STEPS, TINY_BATCH), device="cpu",
                    stride=preset.tile_size)
    preset = small()
    preset.unet.block_out_channels = UNET_CHANNELS
    factor = GPU_FACTOR if profile == "gpu" else 1
    return dict(preset=preset, ae=(AE_STEPS * factor, AE_BATCH), ldm=(LDM_STEPS * factor, LDM_BATCH),
                device="cuda" if profile == "gpu" else "cpu", stride=STRIDE)


def with_changes(preset, items):
    """The preset with autoencoder fields changed by ``field=value`` items (values as JSON)."""
    from napari_histodiff.core.models.presets import Preset

    changed = {}
    for item in items:
        name, _, value = item.partition("=")
        if not hasattr(preset.autoencoder, name) or not value:
            sys.exit(f"error: --set {item}: the autoencoder config has no field {name!r} (give FIELD=VALUE)")
        changed[name] = json.loads(value)
        setattr(preset.autoencoder, name, changed[name])
    preset.name = NAME if preset.name == "small" else preset.name
    return Preset.from_dict(preset.to_dict()), changed


def fp16_megabytes(preset) -> tuple[float, int, int]:
    """The float16 size of the autoencoder and UNet in MB, and their parameter counts."""
    n_vae = sum(p.numel() for p in preset.build_vae().parameters())
    n_unet = sum(p.numel() for p in preset.build_unet().parameters())
    return (n_vae + n_unet) * 2 / 1e6, n_vae, n_unet


def folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


def _timed(cpu: dict, stage: str, gen, work: Path):
    """Run a job generator to its end, adding its CPU and wall time to ``cpu[stage]`` (kept in WORK)."""
    from napari_histodiff.core.base.events import run_to_end

    t0, w0 = time.process_time(), time.perf_counter()
    last = [0.0]

    def show(event):
        if event.stage != "warning" and time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            loss = f" loss {event.loss:.4f}" if event.loss is not None else ""
            print(f"  {event.stage} {event.step}/{event.total}{loss}", flush=True)
        elif event.stage == "warning":
            print(f"  warning: {event.message}", flush=True)

    result = run_to_end(gen, show)
    done = cpu.setdefault(stage, {"cpu_minutes": 0.0, "wall_minutes": 0.0})
    done["cpu_minutes"] += (time.process_time() - t0) / 60
    done["wall_minutes"] += (time.perf_counter() - w0) / 60
    (work / "cpu_minutes.json").write_text(json.dumps(cpu, indent=1))
    print(f"{stage}: {done['cpu_minutes']:.1f} CPU minutes, {done['wall_minutes']:.1f} wall minutes in all",
          flush=True)
    return result


def build(args) -> dict:
    """Train (or resume) the bundle in WORK/bundle and write its compact copy to WORK/he_starter."""
    import torch

    from napari_histodiff.core.base.outdir import kind_of
    from napari_histodiff.core.data.opening import open_tiles
    from napari_histodiff.core.formats.starter import shrink_bundle
    from napari_histodiff.core.jobs.pretrain import (PretrainAutoencoderOptions, PretrainOptions, pretrain,
                                                     pretrain_autoencoder)

    s = profile_settings(args.profile)
    preset, changed = with_changes(s["preset"], args.set)
    size, n_vae, n_unet = fp16_megabytes(preset)
    print(f"preset {preset.name}: autoencoder {n_vae / 1e6:.2f} M, UNet {preset.unet.block_out_channels} "
          f"{n_unet / 1e6:.2f} M parameters; float16 weights {size:.2f} MB", flush=True)
    if args.profile != "tiny" and size > TARGET_MB:
        print(f"warning: {size:.2f} MB of float16 weights is over the {TARGET_MB} MB target", flush=True)
    crc = Path(args.data) / "crc_mini"
    if not crc.is_dir():
        sys.exit(f"error: {crc} not found; give --data, the folder that holds crc_mini/")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "preset.json").write_text(preset.to_json())
    tiles = open_tiles([crc], preset.tile_size, large_images=True, stride=s["stride"], tissue_filter=False,
                       mpp=MPP, slide_mpp=MPP)
    data = (f"crc_mini: 41 tiles of 224 px in 9 tissue classes (ADI BACK DEB LYM MUC MUS NORM STR TUM) from "
            f"NCT-CRC-HE-100K and CRC-VAL-HE-7K, cut into {len(tiles)} tiles of {preset.tile_size} px at stride "
            f"{s['stride']}, {MPP} um/px")
    tiles.description = data  # the bundle's provenance names the set, not this machine's paths
    print(f"{len(tiles)} tiles of {preset.tile_size} px from {crc} (stride {s['stride']}, {MPP} um/px)", flush=True)
    bundle = work / "bundle"
    cpu_file = work / "cpu_minutes.json"
    cpu = json.loads(cpu_file.read_text()) if cpu_file.is_file() else {}
    common = dict(data=[crc], out=bundle, preset=str(work / "preset.json"), device=args.device or s["device"],
                  microns_per_pixel=MPP, large_images=True, stride=s["stride"], tissue_filter=False,
                  slide_mpp=MPP)
    (ae_steps, ae_batch), (ldm_steps, ldm_batch) = s["ae"], s["ldm"]
    intent = "resume" if kind_of(bundle) == "bundle" else "new"
    if (bundle / "histodiff.json").is_file() and \
            json.loads((bundle / "histodiff.json").read_text())["preset"] != json.loads(preset.to_json()):
        sys.exit(f"error: {bundle} was started with another preset (profile or --set); give a new --work")
    ae = _timed(cpu, "autoencoder", pretrain_autoencoder(PretrainAutoencoderOptions(
        **common, intent=intent, steps=ae_steps, batch_size=ae_batch), tiles=tiles), work)
    ldm = _timed(cpu, "unet", pretrain(PretrainOptions(
        **common, intent="resume", steps=ldm_steps, batch_size=ldm_batch, autoencoder_steps=ae_steps),
        tiles=tiles), work)
    minutes = sum(v["cpu_minutes"] for v in cpu.values())
    command = " ".join(["python benchmarks/he_starter.py", "--profile", args.profile]
                       + (["--set", *args.set] if args.set else []))
    what = WHAT.format(px=preset.tile_size, um=preset.tile_size * MPP)
    starter = {"name": NAME, "what": what, "licence": LICENCE, "attribution": ATTRIBUTION, "data": data,
               "recipe": {"command": command, "profile": args.profile, "autoencoder_steps": ae_steps,
                          "autoencoder_batch": ae_batch, "unet_steps": ldm_steps, "unet_batch": ldm_batch,
                          "changed": changed, "cpu_minutes": round(minutes, 1),
                          "cpu_minutes_per_stage": {k: round(v["cpu_minutes"], 1) for k, v in cpu.items()},
                          "threads": torch.get_num_threads(), "device": common["device"]}}
    compact = work / "he_starter"
    shrink_bundle(bundle, compact, intent="overwrite" if compact.exists() else "new", starter=starter)
    mb = folder_megabytes(compact)
    print(f"compact copy {compact}: {mb:.2f} MB (limit {LIMIT_MB} MB); held-out autoencoder PSNR "
          f"{ae.get('psnr') or float('nan'):.2f} dB; latent scale factor {ldm['latent_scale_factor']:.4f}; "
          f"{minutes:.1f} CPU minutes in all", flush=True)
    return {"compact": compact, "megabytes": mb, "starter": starter}


def ship(compact: Path, megabytes: float, target: Path | None = None) -> Path:
    """Copy the compact bundle into the package's starter folder (only one this recipe wrote, or none)."""
    from napari_histodiff.core.formats.starter import STARTERS
    from napari_histodiff.core.formats.bundle import read_meta
    from napari_histodiff.core.formats.starter import shrink_bundle

    if megabytes > LIMIT_MB:
        sys.exit(f"error: the compact bundle is {megabytes:.2f} MB, over the {LIMIT_MB} MB limit; not shipped")
    target = Path(target or STARTERS[NAME])
    shrink_bundle(compact, target, intent="overwrite" if target.exists() else "new",
                  starter=read_meta(compact)["starter"])
    print(f"shipped: {target} ({folder_megabytes(target):.2f} MB)")
    return target


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                    help="the folder that holds crc_mini/")
    ap.add_argument("--work", type=Path, required=True, help="working folder (resumed when run again)")
    ap.add_argument("--profile", choices=("cpu", "gpu", "tiny"), default="cpu",
                    help=f"cpu: {AE_STEPS} autoencoder steps (batch {AE_BATCH}), {LDM_STEPS} UNet steps (batch "
                    f"{LDM_BATCH}); gpu: {GPU_FACTOR}x the steps on cuda; tiny: the tiny preset, a few steps")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="autoencoder preset fields, e.g. latent_channels=8 disc_start=300")
    ap.add_argument("--device", default=None, help="device (default: the profile's)")
    ap.add_argument("--ship", action="store_true", help="write the compact bundle into the package")
    ap.add_argument("--ship-to", type=Path, default=None, help=argparse.SUPPRESS)  # tests
    args = ap.parse_args(argv)
    out = build(args)
    if args.ship or args.ship_to:
        out["shipped"] = ship(out["compact"], out["megabytes"], args.ship_to)
    return out


if __name__ == "__main__":
    main()
