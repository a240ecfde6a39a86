"""The model bundle: one diffusers-style folder that loads with plain diffusers classes.

```
BUNDLE/
  histodiff.json     preset, tile size, latent scale factor, class names, provenance
  vae/               AutoencoderKL (or VQModel, converted)  config.json + diffusion_pytorch_model.safetensors
  unet/              UNet2DModel or HistodiffUNet2DModel (core/unet.py)  (EMA weights)
  scheduler/         DDPMScheduler   scheduler_config.json
  latent_classifier/ LatentClassifier or UNetTrunkClassifier (after fine-tuning)
  selection_classifier/ SelectionClassifier, SelectionEnsemble or AutoencoderTrunkClassifier (after fine-tuning)
  training/          resumable checkpoints (optional)
```
Each part folder also holds ``files.json``: size and sha256 of its files, recorded at save (integrity.py).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..base.errors import BundleError
from ..models.presets import Preset
from .integrity import checked_files, record_files, repair_hint, verify_part, write_manifest

FORMAT = "napari-histodiff-bundle"
FORMAT_VERSION = 1
META_FILE = "histodiff.json"
NORMALISATION = {"input": "uint8 RGB", "model_range": [-1.0, 1.0], "formula": "x / 127.5 - 1"}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("napari-histodiff", "torch", "diffusers", "accelerate", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def new_meta(preset: Preset) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": preset.to_dict(),
        "tile_size": preset.tile_size,
        "microns_per_pixel": None,
        "normalisation": NORMALISATION,
        "latent_scale_factor": None,
        "class_names": [],
        "provenance": {},
        "metrics": {},
    }


class MetaFields:
    """What a model's ``meta`` (its histodiff.json) says, for a loaded bundle and a handle alike."""

    meta: dict

    @property
    def tile_size(self) -> int:
        return int(self.meta["tile_size"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])


@dataclass
class Bundle(MetaFields):
    """Loaded models of a bundle; ``vae``, ``unet`` and ``scheduler`` are diffusers objects."""

    vae: object
    unet: object | None
    scheduler: object
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    latent_classifier: object | None = None  # after `histodiff finetune`
    selection_classifier: object | None = None

    @property
    def scale_factor(self) -> float:
        return float(self.meta.get("latent_scale_factor") or self.vae.config.scaling_factor)

    @property
    def preset(self) -> Preset:
        return Preset.from_dict(self.meta["preset"])

    @property
    def device(self):
        return next(self.vae.parameters()).device

    def models(self) -> list:
        return [m for m in (self.vae, self.unet, self.latent_classifier, self.selection_classifier) if m is not None]

    def to(self, device) -> "Bundle":
        for model in self.models():
            model.to(device)
        return self

    def class_index(self, name: str) -> int:
        """Index of a class name, or a clear error listing the valid ones."""
        from ..base.errors import HistodiffError

        if not self.class_names:
            raise HistodiffError("this bundle has no classes; fine-tune it on labeled tiles with `histodiff finetune`")
        if name not in self.class_names:
            raise HistodiffError(f"unknown class {name!r}; this bundle knows {', '.join(self.class_names)}")
        return self.class_names.index(name)


def write_meta(path: Path, meta: dict) -> None:
    """Write ``histodiff.json`` atomically."""
    path = Path(path)
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, path / META_FILE)


def set_vae_scaling_factor(path: Path, scale: float) -> None:
    """Record the latent scale factor in ``vae/config.json`` too, where diffusers looks for it."""
    f = Path(path) / "vae" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["scaling_factor"] = scale
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    os.replace(tmp, f)
    record_files(f.parent, f.name)


def read_meta(path: Path) -> dict:
    path = Path(path)
    f = path / META_FILE
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle folder (it does not exist or is a file)")
    if not f.is_file():
        raise BundleError(
            f"{path} is not a napari-histodiff bundle: {META_FILE} is missing "
            "(create one with `histodiff pretrain`; a diffusers pipeline folder without model_index.json "
            "loads with {opt:format=diffusers})"
        )
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{f} is unreadable or not JSON ({e}); restore it from a backup") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{f} is not a napari-histodiff bundle description (format key missing)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{path} was written by a newer napari-histodiff; upgrade the package")
    return meta


def save_part(model, path: Path, name: str) -> None:
    """``save_pretrained`` into ``path/name`` atomically (temporary folder, then rename)."""
    path = Path(path)
    tmp, old = path / f".{name}.tmp", path / f".{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if hasattr(model, "parameters"):
            model.save_pretrained(tmp, safe_serialization=True)
        else:  # a scheduler: config only
            model.save_pretrained(tmp)
        write_manifest(tmp)
    except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own error
        from ..base.disk import DiskFull, is_disk_full

        shutil.rmtree(tmp, ignore_errors=True)
        if not is_disk_full(e):
            raise
        size = sum(p.numel() * p.element_size() for p in model.parameters()) if hasattr(model, "parameters") else 0
        raise DiskFull.build(path / name, size or None, what=str(path / name)) from None
    shutil.rmtree(old, ignore_errors=True)
    if (path / name).exists():
        os.replace(path / name, old)
    os.replace(tmp, path / name)
    shutil.rmtree(old, ignore_errors=True)


def _load_part(cls, folder: Path, what: str, meta: dict | None = None):
    if not folder.is_dir():
        raise BundleError(f"bundle {folder.parent} is missing {folder.name}/ ({what}); re-run the training stage that writes it")
    problems = verify_part(folder, checksums=False, label=str(folder))  # sizes and headers: fast
    if problems:
        raise BundleError(f"cannot load {what}: {'; '.join(problems)}; {repair_hint([folder.name], meta)}")
    try:
        model = cls.from_pretrained(folder)
    except Exception as e:  # diffusers raises many kinds; one clear message
        raise BundleError(f"cannot load {what} from {folder}: {type(e).__name__}: {e}") from None
    return _as_float32(model)


def _as_float32(model):
    """Weights stored as float16 (a compact bundle, formats/starter.py) are used as float32."""
    import torch

    if hasattr(model, "parameters") and any(p.is_floating_point() and p.dtype != torch.float32
                                            for p in model.parameters()):
        model.to(torch.float32)
    return model


def load_bundle(path, device=None, require_unet: bool = True) -> Bundle:
    """Load a napari-histodiff bundle folder onto ``device`` (``None``/``auto``: cuda > mps > cpu).

    Foreign checkpoints (CompVis ``.ckpt``, diffusers LDM folders) open with
    :func:`napari_histodiff.core.formats.convert.open_model`."""
    path = Path(path)
    if path.is_file() or (path / "model_index.json").is_file() and not (path / META_FILE).is_file():
        raise BundleError(f"{path} is not a napari-histodiff bundle but a foreign checkpoint; open it with "
                          "open_model() (core.formats.convert) or convert it with `histodiff convert`")
    return _load_folder(path, device, require_unet)


def vae_class(folder: Path):
    from diffusers import AutoencoderKL, VQModel

    name = _class_name(folder)
    if name in (None, "AutoencoderKL"):
        return AutoencoderKL
    if name == "VQModel":
        return VQModel
    raise BundleError(f"unknown autoencoder class {name!r} in {folder}/config.json; expected AutoencoderKL or VQModel")


def _class_name(folder: Path):
    try:
        return json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return None  # _load_part reports the missing or broken config


def _load_folder(path: Path, device, require_unet: bool) -> Bundle:
    from diffusers import DDPMScheduler

    from ..base.devices import pick_device
    from ..models.unet import unet_class

    meta = read_meta(path)
    vae = _load_part(vae_class(path / "vae"), path / "vae", "autoencoder", meta)
    unet = None
    if require_unet or (path / "unet").exists():
        unet = _load_part(unet_class(_class_name(path / "unet")), path / "unet", "diffusion UNet", meta)
    has_scheduler = unet is not None or (path / "scheduler").exists()  # an autoencoder-only bundle may have one
    scheduler = _load_part(DDPMScheduler, path / "scheduler", "noise scheduler", meta) if has_scheduler else None
    bundle = Bundle(vae=vae, unet=unet, scheduler=scheduler, meta=meta, path=path)
    from ..models.trunk import latent_classifier_class, selection_classifier_class

    for name, cls in (("latent_classifier", latent_classifier_class(_class_name(path / "latent_classifier"))),
                      ("selection_classifier", selection_classifier_class(_class_name(path / "selection_classifier")))):
        if (path / name).is_dir():  # each stage's output loads on its own
            setattr(bundle, name, _load_part(cls, path / name, name.replace("_", " "), meta))
    check_consistent(bundle)
    for model in bundle.models():
        model.eval()
    return bundle.to(pick_device(device))


def save_bundle(bundle: Bundle, out, intent: str = "new") -> Path:
    """Write an in-memory bundle (for example a converted checkpoint) as a bundle folder, atomically.

    ``intent``: ``new`` (``out`` must not exist or be empty) or ``overwrite`` (replace our bundle there,
    a folder with histodiff.json or a training checkpoint); any other folder is refused untouched."""
    from ..base.atomic import partial_path, remove_dead_partials, swap_in
    from ..base.outdir import check_output

    out = Path(out)
    check_output(out, "bundle", intent)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(out)
    tmp = partial_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        bundle.vae.register_to_config(scaling_factor=bundle.scale_factor)
        for name, model in (("vae", bundle.vae), ("unet", bundle.unet), ("scheduler", bundle.scheduler),
                            ("latent_classifier", bundle.latent_classifier),
                            ("selection_classifier", bundle.selection_classifier)):
            if model is not None:
                save_part(model, tmp, name)
        write_meta(tmp, bundle.meta)
        swap_in(tmp, out, "bundle")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bundle.path = out
    return out


def check_consistent(bundle: Bundle) -> None:
    meta, vae, unet, path = bundle.meta, bundle.vae, bundle.unet, bundle.path
    problems = []
    tile = meta.get("tile_size")
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    if not isinstance(tile, int) or tile % f:
        problems.append(f"tile_size {tile!r} is not a multiple of the autoencoder's factor {f}")
    if unet is not None:
        latent = vae.config.get("vq_embed_dim") or vae.config.latent_channels
        if unet.config.in_channels != latent:
            problems.append(f"unet expects {unet.config.in_channels} latent channels, vae makes {latent}")
        if isinstance(tile, int) and unet.config.sample_size not in (None, tile // f):
            problems.append(f"unet sample_size {unet.config.sample_size} != tile_size/{f} = {tile // f}")
        if not meta.get("latent_scale_factor"):
            problems.append("latent_scale_factor is missing from histodiff.json")
    n = len(meta.get("class_names") or [])
    for clf in (bundle.latent_classifier, bundle.selection_classifier):
        if clf is not None and clf.config.num_classes != n:
            problems.append(f"{type(clf).__name__} has {clf.config.num_classes} classes, histodiff.json names {n}")
    if problems:
        raise BundleError(f"bundle {path} has parts that do not fit together: " + "; ".join(problems))


def float_dtypes(folder) -> list[str]:
    """The floating dtypes (``float16``, ``float32``, ...) of a part folder's safetensors files, from their
    headers."""
    import struct

    names = {"F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16"}
    found = set()
    for f in sorted(Path(folder).glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        except (OSError, ValueError, struct.error):
            continue
        found |= {names[t["dtype"]] for k, t in header.items() if k != "__metadata__" and t.get("dtype") in names}
    return sorted(found)


def starter_lines(meta: dict) -> list[str]:
    """What ``histodiff info`` says of a built-in model: what it is, its data, licence and attribution."""
    s = meta.get("starter")
    if not isinstance(s, dict):
        return []
    lines = [f"starter     {s.get('name', '?')}: {s.get('what', '?')}"]
    for key in ("data", "licence", "attribution"):
        if s.get(key):
            lines.append(f"{key:<11} {s[key]}")
    return lines


def summary(path, verify: bool = True) -> str:
    """A readable description of a bundle for ``histodiff info`` (``verify``: check its weights)."""
    return describe(path, verify)[0]


def describe(path, verify: bool = True) -> tuple[str, list[str]]:
    """The summary of a bundle and the problems of its files (sizes, sha256, safetensors headers)."""
    import json as _json

    path = Path(path)
    meta = read_meta(path)
    problems = {}
    lines = [f"bundle      {path}", f"preset      {meta['preset']['name']}",
             f"tile size   {meta['tile_size']} px"]
    mpp = meta.get("microns_per_pixel")
    lines.append(f"microns/px  {mpp if mpp else 'unknown'}")
    scale = meta.get("latent_scale_factor")
    lines.append(f"latent scale factor {scale:.5f}" if scale else "latent scale factor (not yet computed)")
    lines.append(f"classes     {', '.join(meta.get('class_names') or []) or '(none: unconditional)'}")
    lines += starter_lines(meta)
    if meta.get("class_counts"):
        lines.append("labeled     " + ", ".join(f"{c} {n} tiles" for c, n in meta["class_counts"].items()))
    for part in ("vae", "unet", "scheduler", "latent_classifier", "selection_classifier"):
        if part.endswith("classifier") and not (path / part).is_dir():
            continue
        folder = path / part
        if not folder.is_dir():
            lines.append(f"{part:<11} missing")
            continue
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        configs = sorted(folder.glob("*config.json"))
        try:
            name = _json.loads(configs[0].read_text()).get("_class_name", "?")
        except (IndexError, OSError, ValueError):
            name = "config missing or unreadable"
        problems[part] = verify_part(folder) if verify else []
        stored = " (stored as float16)" if float_dtypes(folder) == ["float16"] else ""
        lines.append(f"{part:<11} {name}, {size / 1e6:.1f} MB of weights{stored}"
                     + (" DAMAGED" if problems[part] else ""))
    missing = missing_parts(path, meta)
    lines.append("status      complete" if not missing else
                 f"status      INCOMPLETE: no {', '.join(p + '/' for p in missing)} (training stopped before "
                 "writing it); run the same training command again with --resume to finish it")
    if verify:
        lines += _weights_lines(path, problems, meta)
    conv = (meta.get("provenance") or {}).get("converted")
    if isinstance(conv, dict):
        lines.append(f"converted   from {conv.get('format', '?')} {conv.get('source', '?')} "
                     f"({'EMA' if conv.get('ema') else 'model'} weights, sha256 {str(conv.get('sha256', '?'))[:12]})")
    for stage, prov in (meta.get("provenance") or {}).items():
        if not isinstance(prov, dict) or "steps" not in prov:
            if isinstance(prov, str):
                lines.append(f"{stage:<11} {prov}")
            continue
        lines.append(f"trained     {stage}: {prov.get('steps', '?')} steps on {prov.get('tiles', '?')} tiles "
                     f"({prov.get('data', '?')}), seed {prov.get('seed', '?')}")
    from .retention import PREFIX, KEYS, from_metrics, retention_line

    line = retention_line(from_metrics(meta.get("metrics") or {}))
    if line:
        lines.append(f"retention   {line}")
    for key, value in (meta.get("metrics") or {}).items():
        if line and key in {PREFIX + k for k in KEYS}:
            continue
        if value is not None:
            lines.append(f"metric      {key} = {value:.3f}" if isinstance(value, float) else f"metric      {key} = {value}")
    return "\n".join(lines), [p for found in problems.values() for p in found]


def missing_parts(path, meta: dict) -> list[str]:
    """The parts a bundle of its kind should have and does not: the UNet and scheduler of a pre-trained
    model (unless it is an autoencoder alone), both classifiers of a fine-tuned one."""
    path = Path(path)
    expected = ["vae"]
    if "diffusion" in (meta.get("provenance") or {}) or (path / "unet").is_dir() or meta.get("class_names"):
        expected += ["unet", "scheduler"]
    if meta.get("class_names"):
        expected += ["latent_classifier", "selection_classifier"]
    return [p for p in expected if not (path / p).is_dir()]


def _weights_lines(path: Path, problems: dict, meta: dict) -> list[str]:
    damaged = [p for found in problems.values() for p in found]
    if damaged:
        return ([f"weights     DAMAGED: {len(damaged)} problem{'s' * (len(damaged) > 1)}, do not use this bundle"]
                + [f"{'damaged' if i == 0 else '':<11} {p}" for i, p in enumerate(damaged)]
                + [f"fix         {repair_hint([k for k, v in problems.items() if v], meta)}"])
    n = checked_files(path, list(problems))
    if n:
        return [f"weights     verified (sha256 of {n} file{'s' * (n != 1)})"]
    return ["weights     sizes and safetensors headers checked (no checksums were recorded at save)"]


def bundle_hash(path) -> str:
    """Short sha256 over a bundle's description and weights: which model made a tile."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    files = [path / META_FILE] + sorted(path.glob("*/*.safetensors")) + sorted(path.glob("*/*config.json"))
    for f in files:
        if "training" in f.parts[len(path.parts):]:
            continue
        h.update(f.relative_to(path).as_posix().encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def require_intact(path, parts) -> None:
    """Raise a ``BundleError`` naming every damaged file of ``parts`` of the bundle the user gave at ``path``
    (before they are copied elsewhere)."""
    path = Path(path)
    problems = {part: verify_part(path / part, label=str(path / part)) for part in parts}
    damaged = [part for part in parts if problems[part]]
    if damaged:
        listed = "; ".join(p for part in damaged for p in problems[part])
        raise BundleError(f"the bundle {path} is damaged: {listed}; {repair_hint(damaged, read_meta(path))}")
