"""Safe reading of foreign (CompVis / PyTorch-Lightning) checkpoints and their YAML configs.

Pickled checkpoints are never unpickled with code execution: ``torch.load(weights_only=True)`` plus an
explicit allow-list of inert stand-in classes registered under the names Lightning writes. Anything
else in the pickle is refused before loading, by name.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..base.errors import HistodiffError


class LightningStandIn:
    """Inert placeholder for a Lightning object in a checkpoint: it only keeps the pickled state."""

    lightning_name = ""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, {}

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<stand-in for {self.lightning_name or type(self).__name__}>"


class ModelCheckpointStandIn(LightningStandIn):
    lightning_name = "ModelCheckpoint"


class EarlyStoppingStandIn(LightningStandIn):
    lightning_name = "EarlyStopping"


class AttributeDictStandIn(dict):
    """Plain dict standing in for Lightning's ``AttributeDict`` (hyper-parameters)."""


def _lightning_names(module: str, name: str) -> list[str]:
    return [f"pytorch_lightning.{module}.{name}", f"lightning.pytorch.{module}.{name}"]


ALLOWED_STAND_INS: dict[str, type] = {
    **{n: ModelCheckpointStandIn for n in _lightning_names("callbacks.model_checkpoint", "ModelCheckpoint")},
    **{n: EarlyStoppingStandIn for n in _lightning_names("callbacks.early_stopping", "EarlyStopping")},
    **{n: AttributeDictStandIn for n in _lightning_names("utilities.parsing", "AttributeDict")},
    "lightning_fabric.utilities.data.AttributeDict": AttributeDictStandIn,
}


def _not_readable(path: Path, detail: object) -> HistodiffError:
    return HistodiffError(
        f"{path} is not a readable PyTorch checkpoint (it may be truncated, or another kind of file): {detail}. "
        "Check the file (download it again if it is cut short) and pass a .ckpt/.pt written by torch.save."
    )


def _refused(path: Path, names) -> HistodiffError:
    listed = ", ".join(sorted(names))
    return HistodiffError(
        f"{path} was not loaded: it refers to code outside the allow-list of inert checkpoint contents "
        f"({listed}); loading it could run code from the file. Use a checkpoint from a trusted source "
        "that holds only tensors and plain data, or convert it where you trust it to a safetensors bundle."
    )


def safe_load_checkpoint(path) -> dict:
    """Load a ``.ckpt``/``.pt`` without executing anything from it; returns the checkpoint dict."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise HistodiffError(f"Checkpoint {path} does not exist. Check the path.")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # neither torch.save's zip nor a (legacy) pickle
        raise _not_readable(path, f"it is neither a zip nor a pickle file (it starts with bytes {magic.hex() or 'none'})")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except ValueError:
        unsafe = []  # not a zip checkpoint (legacy or not a checkpoint): the weights-only loader decides below
    except Exception as exc:  # truncated zip, unreadable file
        raise _not_readable(path, exc) from None
    offending = [g for g in unsafe if g not in ALLOWED_STAND_INS]
    if offending:
        raise _refused(path, offending)
    pairs = [(cls, name) for name, cls in ALLOWED_STAND_INS.items()]
    try:
        with torch.serialization.safe_globals(pairs):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise _refused(path, set(found)) from None
        raise _not_readable(path, str(exc).splitlines()[-1] if str(exc) else type(exc).__name__) from None
    except Exception as exc:
        raise _not_readable(path, exc) from None
    if not isinstance(ckpt, dict):
        raise HistodiffError(
            f"{path} holds a {type(ckpt).__name__}, not a checkpoint dictionary. "
            "Pass a Lightning .ckpt or a state-dict .pt file."
        )
    return ckpt


def read_yaml_config(path) -> dict:
    """Read a YAML config with ``yaml.safe_load`` (no Python objects are built from it)."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with napari
        raise HistodiffError("Reading YAML configs needs PyYAML: run `pip install pyyaml`.") from None
    path = Path(path)
    if not path.is_file():
        raise HistodiffError(f"Config {path} does not exist. Check the path given with {{opt:config}}.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise HistodiffError(f"Config {path} is not valid YAML ({exc}). Pass the model's YAML config.") from None
    if not isinstance(data, dict):
        raise HistodiffError(
            f"Config {path} does not hold a YAML mapping (got {type(data).__name__}). Pass the model's YAML config."
        )
    return data


def find_config(ckpt_path, config=None) -> Path:
    """The YAML config of a checkpoint: explicit, beside it, or in a Lightning log folder layout."""
    if config is not None:
        config = Path(config)
        if not config.is_file():
            raise HistodiffError(f"Config {config} does not exist. Check the path given with {{opt:config}}.")
        return config
    ckpt_path = Path(ckpt_path)
    folder = ckpt_path.parent
    same_stem = folder / f"{ckpt_path.stem}.yaml"
    if same_stem.is_file():
        return same_stem
    beside = sorted(folder.glob("*.yaml"))
    if len(beside) == 1:
        return beside[0]
    looked = [str(same_stem), f"{folder}/*.yaml (found {len(beside)})"]
    if folder.name == "checkpoints":
        pattern = folder.parent / "configs" / "*-project.yaml"
        found = sorted(pattern.parent.glob(pattern.name))
        if found:
            return found[-1]  # Lightning writes <timestamp>-project.yaml; the newest sorts last
        looked.append(str(pattern))
    raise HistodiffError(
        f"No YAML config found for {ckpt_path}; looked at: {'; '.join(looked)}. "
        "Pass the model's config with {opt:config}."
    )


def ema_key_table(state_dict, prefix="model.diffusion_model.", ema_prefix="model_ema.") -> dict[str, str]:
    """``{ema_key: param_key}`` for the EMA buffers (parameter names with every dot removed)."""
    parent = prefix.split(".")[0] + "."  # "model." is not part of the EMA name
    table = {}
    for key in state_dict:
        if key.startswith(prefix):
            ema_key = ema_prefix + key[len(parent):].replace(".", "")
            if ema_key in state_dict:
                table[ema_key] = key
    return table


def unet_state_dict(ckpt: dict, ema: bool | None = None) -> tuple[dict, bool]:
    """The UNet weights with ``model.diffusion_model.`` stripped, and whether EMA values were used."""
    prefix = "model.diffusion_model."
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict):
        raise HistodiffError("The checkpoint's state_dict is not a dictionary of tensors; it cannot be converted.")
    params = {k: v for k, v in sd.items() if k.startswith(prefix)}
    if not params:
        raise HistodiffError(
            f"The checkpoint has no UNet weights (no keys starting with {prefix!r}). "
            "Pass a CompVis LatentDiffusion checkpoint."
        )
    has_ema = any(k.startswith("model_ema.") and k not in ("model_ema.decay", "model_ema.num_updates") for k in sd)
    use_ema = has_ema if ema is None else bool(ema)
    if use_ema and not has_ema:
        raise HistodiffError("The checkpoint has no EMA weights (model_ema.*). Use {opt:ema=false} to load the model weights.")
    if not use_ema:
        return {k[len(prefix):]: v for k, v in params.items()}, False
    by_param = {p: e for e, p in ema_key_table(sd, prefix).items()}
    missing = [k for k in params if k not in by_param]
    if missing:
        few = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise HistodiffError(
            f"The checkpoint's EMA weights are incomplete: no EMA entry for {few}. Use {{opt:ema=false}} to load the model weights."
        )
    return {k[len(prefix):]: sd[by_param[k]] for k in params}, True
