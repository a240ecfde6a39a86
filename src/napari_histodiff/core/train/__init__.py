"""Training: the shared loop pieces, losses, autoencoder, diffusion UNet, classifiers, fine-tuning."""
