"""Generation: guided sampling, selection of synthetic tiles, sample folders and export."""
