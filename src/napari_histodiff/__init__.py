"""napari-histodiff: class-guided latent diffusion for histopathology tile augmentation."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_bundle", "open_model"]


def open_model(source, device=None, **options):
    """Open a bundle folder, CompVis ``.ckpt`` or diffusers LDM folder; see
    :func:`napari_histodiff.core.formats.convert.open_model`."""
    from .core.formats.convert import open_model as _open

    return _open(source, device=device, **options)


load_bundle = open_model  # the name used before open_model existed
