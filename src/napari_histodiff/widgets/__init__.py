"""napari dock widgets: thin over ``napari_histodiff.core``.

Load model, Fine-tune, Sample, Review & export. Long work runs in napari generator workers.
"""
