"""Every help works (issue 27, item 1; issue 31, item 7): every command's ``--help`` exits 0 and shows each
option with its help text, ``%`` and reST included; ``-V`` prints the version; help texts say what an
option does (research figures live in docs/results.md)."""

import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from napari_histodiff.cli import Parser, add_options, flag_of, main, option_fields
from napari_histodiff.core.base.options import fields, option
from napari_histodiff.core.jobs import JOBS


def help_of(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    return out


def squeezed(text: str) -> str:
    """``text`` without any whitespace: argparse wraps help lines (and may break after a hyphen)."""
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j.name)
def test_every_command_help_exits_0_and_shows_every_option(job, capsys):
    out = help_of(capsys, job.name, "--help")
    assert out.startswith(f"usage: histodiff {job.name}")
    flat = squeezed(out)
    for f, _ in option_fields(job.options_class()):
        name = (f.metadata["metavar"] or f.name) if f.metadata["positional"] else flag_of(f)
        assert name in out, (job.name, name)
        assert squeezed(f.metadata["help"]) in flat, (job.name, f.name)  # '%' shown as it is written


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j.name)
def test_help_shows_plain_text_not_rest_markup(job, capsys):
    out = help_of(capsys, job.name, "--help")
    assert "``" not in out and not re.search(r":(func|class|meth|mod|data|attr):`", out), out[:600]


def test_pretrain_description_names_options_by_their_flags(capsys):
    out = " ".join(help_of(capsys, "pretrain", "--help").split())
    assert "after the autoencoder (trained first unless --autoencoder names a bundle" in out
    out = " ".join(help_of(capsys, "convert", "--help").split())
    assert "read with torch.load(weights_only=True): nothing in it is executed. With --to-compvis," in out


def test_a_percent_sign_in_a_help_text_is_shown_as_written():
    @dataclass
    class Opts:
        """``histodiff x``: 100% of the ``tiles``, %(prog) left alone."""

        tiles: int = option(5, help="keep 50% of the tiles (at most 90 %), see %(prog)s")
        mode: str = option("a", choices=("a", "b"), consts={"--b%": "b"}, help="mode 1%")

    parser = Parser(prog="histodiff x", description="100% done")
    add_options(parser, Opts)
    text = " ".join(parser.format_help().split())
    assert "keep 50% of the tiles (at most 90 %), see %(prog)s (default: 5)" in text
    assert "mode 1% (default: a)" in text and "same as --mode b" in text
    docs = Path(__file__).resolve().parents[1] / "docs"
    if (docs / "cli_reference.py").is_file():  # docs/cli.md's tables show it as written too
        sys.path.insert(0, str(docs))
        try:
            from cli_reference import options_table
        finally:
            sys.path.remove(str(docs))
        table = options_table(parser)
        assert "keep 50% of the tiles (at most 90 %), see %(prog)s |" in table and "%%" not in table


def test_help_and_version_in_a_real_process():
    run = [sys.executable, "-m", "napari_histodiff"]
    p = subprocess.run([*run, "finetune", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "--selection-augment" in p.stdout and "Traceback" not in p.stderr
    from napari_histodiff import __version__

    for flag in ("-V", "--version"):
        p = subprocess.run([*run, flag], capture_output=True, text=True, timeout=120)
        assert (p.returncode, p.stdout.strip(), p.stderr) == (0, f"histodiff {__version__}", ""), flag


def test_short_version_flag(capsys):
    from napari_histodiff import __version__

    assert help_of(capsys, "-V").strip() == f"histodiff {__version__}"


FIGURE = re.compile(r"\d\s?%|\d\s*->\s*\d|\bcrc5\b|\bNCT\b|accuracy (of|from|to) \d")


def every_field():
    seen, out = set(), []

    def walk(cls):
        for f in fields(cls):
            d = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(d):
                walk(type(d))
            elif (cls.__name__, f.name) not in seen:
                seen.add((cls.__name__, f.name))
                out.append((cls, f))

    for job in JOBS:
        walk(job.options_class())
    return out


def test_help_texts_say_what_an_option_does_not_research_figures():
    found = [(cls.__name__, f.name, f.metadata["help"]) for cls, f in every_field()
             if FIGURE.search(f.metadata["help"])]
    assert not found, found
