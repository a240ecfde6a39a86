"""napari-histodiff: class-guided latent diffusion for histopathology tile augmentation."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_bundle"]


def load_bundle(path, device=None, **options):
    """Load a model bundle folder; see :func:`napari_histodiff.core.bundle.load_bundle`."""
    from .core.bundle import load_bundle as _load

    return _load(path, device=device, **options)
