"""The Load tab with the built-in he-starter model chosen and loaded: ``docs/images/load_starter.png``.

    xvfb-run -a python docs/load_starter_shot.py
"""

from __future__ import annotations

import time
from pathlib import Path

from screenshots import wait  # the same folder

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
    wait(app, lambda: "preset" in load.card.text(), load, timeout=300)
    settle = time.time() + 0.4
    wait(app, lambda: time.time() > settle)
    HERE.mkdir(exist_ok=True)
    getattr(load, "page", load).grab().save(str(HERE / "load_starter.png"))
    print("wrote", HERE / "load_starter.png")
    print(load.card.text())
    viewer.close()


if __name__ == "__main__":
    main()
