"""The Load tab with the built-in he-starter model chosen and loaded: ``docs/images/load_starter.png``.

    xvfb-run -a python docs/load_starter_shot.py
"""

from __future__ import annotations

import time
from pathlib import Path

HERE = Path(__file__).resolve().parent / "images"


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(1280, 800)
    _, dock = viewer.window.add_plugin_dock_widget("napari-histodiff", "HistoDiffusion")
    load = dock.show_panel("load")
    load.builtin.setCurrentIndex(load.builtin.findData("he-starter"))
    load.device.setCurrentText("cpu")
    load.load()
    start = time.time()
    while "preset" not in load.card.text():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - start > 300:
            raise TimeoutError("the starter did not load in 5 minutes")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    HERE.mkdir(exist_ok=True)
    getattr(load, "page", load).grab().save(str(HERE / "load_starter.png"))
    print("wrote", HERE / "load_starter.png")
    print(load.card.text())
    viewer.close()


if __name__ == "__main__":
    main()
