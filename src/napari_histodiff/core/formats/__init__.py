"""On-disk formats: the model bundle, sample records, tile images, foreign checkpoints and their conversion."""
