"""Ctrl-C prints one line (issue 31, item 7): the terminal sends SIGINT to the job and its DataLoader
workers; a worker interrupted inside imageio printed a traceback of imageio's half-made plugin after the
"interrupted" line. Workers ignore SIGINT (the main process stops them), and tiles are read with Pillow
itself (no half-made plugin), exactly as imageio read them."""

import os
import signal

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from napari_histodiff.core.data.tiles import read_rgb, to_rgb_uint8


class SelfInterrupting:
    """A map-style dataset whose worker sends itself SIGINT (as a Ctrl-C in the terminal does) and reports
    what became of it."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        os.kill(os.getpid(), signal.SIGINT)
        return int(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)


def test_a_worker_survives_ctrl_c_and_the_main_process_keeps_its_handler():
    from napari_histodiff.core.train.loop import batch_loader

    before = signal.getsignal(signal.SIGINT)
    out = [int(b) for b in batch_loader(SelfInterrupting(), 0, 4, num_workers=1)]
    assert out == [1, 1, 1, 1]  # each batch came back: the workers ignored the SIGINT they got
    assert signal.getsignal(signal.SIGINT) is before


def _images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    paths = {}
    for name, img in {"rgb.png": Image.fromarray(rgb), "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
                      "gray.png": Image.fromarray(rgb[..., 0]),
                      "palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
                      "u16.png": Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)),
                      "rgb.jpg": Image.fromarray(rgb), "gray.jpg": Image.fromarray(rgb[..., 0]),
                      "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"), "rgb.bmp": Image.fromarray(rgb)}.items():
        img.save(tmp_path / name)
        paths[name] = tmp_path / name
    return paths


def test_tiles_read_as_imageio_read_them(tmp_path):
    for name, path in _images(tmp_path).items():
        jpeg = name.endswith(".jpg")
        old = to_rgb_uint8(iio.imread(path, plugin="pillow", index=0, **({"mode": "RGB"} if jpeg else {})))
        new = read_rgb(path)
        assert new.dtype == np.uint8 and new.shape == (12, 10, 3), name
        np.testing.assert_array_equal(new, old, err_msg=name)


def test_a_truncated_png_is_still_a_clear_error(tmp_path):
    from napari_histodiff.core.base.errors import TileReadError

    path = _images(tmp_path)["rgb.png"]
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(TileReadError, match="truncated or not an image"):
        read_rgb(path)
