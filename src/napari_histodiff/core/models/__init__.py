"""Model definitions: presets, the diffusion UNet, the two classifiers of the method, downstream classifiers."""

DOWNSTREAM_ARCHS = ("resnet", "vit")  # what models.downstream.build makes (here: no torch to import)
