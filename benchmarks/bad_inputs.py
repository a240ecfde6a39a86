"""A new user's mistakes and damaged files, tried on the `histodiff` command; prints figures.

    python benchmarks/bad_inputs.py [--keep DIR]

Every case runs the real CLI in a subprocess. A case passes when it exits with code 2 and one
`histodiff: error:` line that contains the expected words (no traceback), or, for input that is
used with a warning, exits 0 with a `histodiff: warning:` line with those words. Every file the
"user" made (tiles, their own folders, their bundles) is hashed before and after: the count of
files deleted or changed must be 0.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cli(args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "napari_histodiff", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_inputs(root: Path) -> None:
    """Tile folders a user would have, and their mistakes."""
    import tifffile
    from PIL import Image

    from napari_histodiff.core.jobs.demo import demo_labeled_tiles, demo_tiles

    tiles, labeled = demo_tiles(32), demo_labeled_tiles(32)
    (root / "unlabeled").mkdir(parents=True)
    for i in range(0, len(tiles), max(1, len(tiles) // 64)):
        Image.fromarray(tiles[i]).save(root / "unlabeled" / f"t{i:04d}.png")
    for i in range(len(labeled)):
        name = labeled.class_names[labeled.label(i)]
        (root / "labeled" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(labeled[i]).save(root / "labeled" / name / f"{i:04d}.png")
    shutil.copytree(root / "labeled", root / "with-empty-class")
    (root / "with-empty-class" / "STROMA").mkdir()
    (root / "one-class" / "TUM").mkdir(parents=True)
    for f in sorted((root / "labeled").rglob("*.png"))[:8]:
        shutil.copy(f, root / "one-class" / "TUM" / f.name)
    shutil.copytree(root / "labeled", root / "three-tiles")
    for f in sorted((root / "three-tiles" / labeled.class_names[0]).glob("*.png"))[3:]:
        f.unlink()
    shutil.copytree(root / "labeled", root / "nan-tile")
    bad = np.full((32, 32, 3), 0.5, np.float32)
    bad[3:9, 3:9] = np.nan
    tifffile.imwrite(root / "nan-tile" / labeled.class_names[0] / "float.tif", bad)
    shutil.copytree(root / "labeled", root / "mixed-sizes")
    for f in sorted((root / "mixed-sizes" / labeled.class_names[1]).glob("*.png")):
        Image.open(f).resize((8, 8)).save(f)
    shutil.copytree(root / "labeled", root / "grey-tiles")
    for f in sorted((root / "grey-tiles" / labeled.class_names[0]).glob("*.png"))[:5]:
        Image.open(f).convert("L").save(f)
    (root / "no-images").mkdir()
    (root / "no-images" / "notes.txt").write_text("not a tile")
    (root / "my-results").mkdir()
    (root / "my-results" / "thesis.docx").write_bytes(b"the user's own file")
    (root / "garbage.ckpt").write_bytes(os.urandom(4096))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from slide_data import write_slide

    (root / "slides").mkdir()
    write_slide(root / "slides" / "case.tif", 2048, 2048, [(512, 512, 1536, 1536, (230, 150, 190))], mpp=0.25)
    tifffile.imwrite(root / "slides" / "no-mpp.tif", np.full((512, 512, 3), 200, np.uint8), photometric="rgb")
    (root / "slides" / "broken.svs").write_bytes(os.urandom(8192))
    (root / "slides" / "scan.czi").write_bytes(b"ZISRAWFILE")
    (root / "slides" / "not.geojson").write_text("<xml/>")
    (root / "slides" / "far.geojson").write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                                                 '"geometry": {"type": "Polygon", "coordinates": [[[9000, 9000], '
                                                 '[9500, 9000], [9500, 9500], [9000, 9000]]]}, "properties": '
                                                 '{"classification": {"name": "Tumor"}}}]}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="histodiff-bad-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_inputs(root)
    quick = ["--device", "cpu"]
    for step in (["pretrain", "unlabeled", "--preset", "tiny", "--steps", "20", "--autoencoder-steps", "20",
                  "--out", "pre", *quick],
                 ["finetune", "pre", "--labeled", "labeled", "--out", "ft", "--unet-steps", "2",
                  "--classifier-steps", "5", "--selection-steps", "5", *quick],
                 ["sample", "ft", "--per-class", "2", "--steps", "4", "--out", "samples", *quick]):
        done = cli(step, root)
        assert done.returncode == 0, done.stderr
    for name, part in (("truncated", "unet"), ("flipped", "unet")):
        shutil.copytree(root / "pre", root / name)
        f = root / name / part / "diffusion_pytorch_model.safetensors"
        data = bytearray(f.read_bytes())
        if name == "truncated":
            data = data[: len(data) - 1000]
        else:
            data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    shutil.copytree(root / "pre", root / "bad-json")
    (root / "bad-json" / "histodiff.json").write_text("{not json")
    ft = ["--unet-steps", "1", "--classifier-steps", "2", "--selection-steps", "2", *quick]
    cases = [  # (what, command, "error" or "warning", words the message must hold)
        ("empty class folder", ["finetune", "pre", "--labeled", "with-empty-class", "--out", "o1", *ft], "error", "STROMA"),
        ("one class only", ["finetune", "pre", "--labeled", "one-class", "--out", "o2", *ft], "error", "at least 2 classes"),
        ("class with 3 tiles", ["finetune", "pre", "--labeled", "three-tiles", "--out", "o3", *ft], "error", "too few tiles"),
        ("NaN pixels in a float TIFF", ["finetune", "pre", "--labeled", "nan-tile", "--out", "o4", *ft], "error", "NaN"),
        ("8 px tiles beside 32 px tiles", ["finetune", "pre", "--labeled", "mixed-sizes", "--out", "o5", *ft],
         "warning", "more than 2x smaller"),
        ("grayscale tiles in a colour set", ["finetune", "pre", "--labeled", "grey-tiles", "--out", "o6", *ft],
         "warning", "grayscale"),
        ("model path that does not exist", ["finetune", "nowhere", "--labeled", "labeled", "--out", "o7", *ft],
         "error", "nowhere"),
        ("random bytes as a checkpoint", ["sample", "garbage.ckpt", "-n", "2", "--out", "o8", *quick], "error",
         "garbage.ckpt"),
        ("truncated UNet weights (fine-tune source)", ["finetune", "truncated", "--labeled", "labeled", "--out", "o9",
                                                       *ft], "error", "truncated"),
        ("truncated UNet weights (info)", ["info", "truncated"], "error", "truncated"),
        ("one flipped byte in the UNet (info)", ["info", "flipped"], "error", "checksum"),
        ("histodiff.json not JSON", ["sample", "bad-json", "-n", "2", "--out", "o10", *quick], "error", "not JSON"),
        ("a folder that is not a bundle (info)", ["info", "labeled"], "error", "not a napari-histodiff bundle"),
        ("output into the user's own folder (finetune)", ["finetune", "pre", "--labeled", "labeled", "--out",
                                                          "my-results", "--overwrite", *ft], "error", "never replaced"),
        ("output into the user's own folder (sample)", ["sample", "ft", "-n", "2", "--out", "my-results",
                                                        "--overwrite", *quick], "error", "never replaced"),
        ("output into the user's own folder (export)", ["export", "samples", "--out", "my-results", "--overwrite"],
         "error", "never replaced"),
        ("unknown class name", ["sample", "ft", "--class", "TUMOUR", "-n", "2", "--out", "o11", *quick], "error",
         "TUMOUR"),
        ("guided sampling from a model without classes", ["sample", "pre", "--class", "A", "-n", "2", "--out",
                                                          "o12", *quick], "error", "finetune"),
        ("zero tiles", ["sample", "ft", "-n", "0", "--out", "o13", *quick], "error", "at least 1"),
        ("guidance scale NaN", ["sample", "ft", "--guidance", "nan", "--out", "o14", *quick], "error", "guidance"),
        ("a folder without images", ["pretrain", "no-images", "--out", "o15", *quick], "error", "no image files"),
        ("negative steps", ["pretrain", "unlabeled", "--steps", "-5", "--out", "o16", *quick], "error", "steps"),
        ("export of a folder that is not a sample folder", ["export", "labeled", "--out", "o17"], "error",
         "samples.csv"),
        ("resume with another learning rate", ["finetune", "pre", "--labeled", "labeled", "--out", "ft", "--resume",
                                               "--unet-lr", "0.01", "--unet-steps", "2", "--classifier-steps", "5",
                                               "--selection-steps", "5", *quick], "error", "--unet-learning-rate"),
        ("a slide format that is not supported", ["tiles", "slides/scan.czi", "--out", "t1"], "error", ".svs"),
        ("a damaged slide", ["tiles", "slides/broken.svs", "--out", "t2"], "error", "broken.svs"),
        ("--mpp for a slide without microns per pixel", ["tiles", "slides/no-mpp.tif", "--mpp", "1", "--out", "t3"],
         "error", "--slide-mpp"),
        ("GeoJSON that is not GeoJSON", ["tiles", "slides/case.tif", "--annotations", "slides/not.geojson",
                                         "--out", "t4"], "error", "not.geojson"),
        ("annotations outside the slide", ["tiles", "slides/case.tif", "--annotations", "slides/far.geojson",
                                           "--out", "t5"], "error", "outside"),
        ("a tile larger than the slide", ["tiles", "slides/case.tif", "--tile-size", "1024", "--mpp", "1",
                                          "--out", "t6"], "error", "--tile-size"),
        ("a GPU that is not there", ["sample", "ft", "-n", "2", "--out", "o18", "--device", "cuda:3"], "error", "cuda"),
    ]
    user = {name: snapshot(root / name) for name in ("unlabeled", "labeled", "my-results", "pre", "ft", "samples", "slides",
                                                     "with-empty-class", "nan-tile", "mixed-sizes", "grey-tiles")}
    clear = 0
    print(f"{'case':<48} result")
    for what, cmd, kind, words in cases:
        done = cli(cmd, root)
        lines = [x for x in done.stderr.splitlines() if x.startswith("histodiff: ")]
        want = f"histodiff: {kind}:"
        said = done.stderr[done.stderr.find(want):] if want in done.stderr else ""  # the message, all its lines
        ok = "Traceback" not in done.stderr and done.returncode == (2 if kind == "error" else 0) and \
            words.lower() in said.lower()
        clear += ok
        shown = next((x for x in lines if x.startswith(want)), done.stderr.strip().splitlines()[-1:] or ["(nothing)"])
        print(f"{what:<48} {'ok ' if ok else 'BAD'} exit {done.returncode}: {str(shown)[:150]}")
    after = {name: snapshot(root / name) for name in user}
    lost = sum(len(set(user[n]) - set(after[n])) for n in user)
    changed = sum(1 for n in user for k in user[n] if k in after[n] and after[n][k] != user[n][k])
    print(f"\nbad inputs tried: {len(cases)}; clear message: {clear}; user files deleted: {lost}; changed: {changed}; "
          f"{time.perf_counter() - t0:.0f} s")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
