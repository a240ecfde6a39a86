"""Model definitions: presets, the diffusion UNet, the two classifiers of the method, downstream classifiers."""
