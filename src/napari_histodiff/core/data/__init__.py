"""Tile sets: tile folders, large images and annotations turned into tiles."""
