"""Run one `histodiff` command in this process and SIGKILL it at one progress event (fault injection).

usage: python fault_child.py [--kill STAGE:STEP] -- COMMAND ARGS...

Without ``--kill`` the command runs to its end. One thread, so runs in different processes compute
the same bits.
"""

import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv):
    kill = None
    if argv[0] == "--kill":
        stage, step = argv[1].split(":")
        kill, argv = (stage, int(step)), argv[2:]
    assert argv[0] == "--"
    import torch

    torch.set_num_threads(1)
    from napari_histodiff.cli import build_options, build_parser
    from napari_histodiff.core.base.events import run_to_end

    args = build_parser().parse_args(argv[1:])
    opts = build_options(args.job.options_class(), args)

    def on_event(event):
        if kill and (event.stage, event.step) == kill:
            os.kill(os.getpid(), signal.SIGKILL)

    run_to_end(args.job.run(opts), on_event)


if __name__ == "__main__":
    main(sys.argv[1:])
