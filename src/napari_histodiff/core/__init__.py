"""Pure-Python core of napari-histodiff: no Qt, no napari, no magicgui."""
