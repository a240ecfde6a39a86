"""Evaluation: downstream classifiers trained on real and augmented tiles, compared over seeds."""
