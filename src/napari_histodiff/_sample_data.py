"""Sample data for napari: the embedded demo image used by ``histodiff demo``."""


def demo_tissue():
    import skimage.data

    image = skimage.data.immunohistochemistry()
    return [(image, {"name": "colon tissue (IHC)", "rgb": True}, "image")]
