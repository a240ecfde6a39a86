"""Sample data for napari: the demo image, alone or with a stain annotation layer."""


def demo_tissue():
    import skimage.data

    image = skimage.data.immunohistochemistry()
    return [(image, {"name": "colon tissue (IHC)", "rgb": True}, "image")]


def demo_tissue_annotated():
    """The demo image plus a Labels layer from the demonstration labelling (DAB-rich = 1,
    hematoxylin-rich = 2; see ``core.demo.demo_labeled_tiles``), ready for the Fine-tune widget."""
    import numpy as np

    from .core.jobs.demo import DEMO_CLASSES, demo_labeled_tiles

    tile = 32
    labeled = demo_labeled_tiles(tile, stride=tile)
    labels = np.zeros((512, 512), np.uint8)
    for origin, label in zip(labeled.origins, labeled.labels):
        xy = dict(part.split("=") for part in origin.split("@")[-1].split(","))
        y, x = int(xy["y"]), int(xy["x"])
        labels[y : y + tile, x : x + tile] = label + 1
    features = {"index": [0, 1, 2], "class": ["", *DEMO_CLASSES]}
    return [*demo_tissue(), (labels, {"name": "stain annotations", "features": features, "opacity": 0.4}, "labels")]
