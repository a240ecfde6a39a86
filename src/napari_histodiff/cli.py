"""The ``histodiff`` command, generated from the jobs' options (``core.jobs``): no job logic here.

Every flag, type, default, choice and help text comes from a field of the job's options dataclass;
heavy imports (torch, diffusers) happen when a job runs, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing

EXIT_BAD_INPUT = 2
WORKFLOW = """\
workflow:
  histodiff pretrain TILES/ --out pre             unlabeled tiles -> autoencoder + diffusion UNet
  histodiff finetune pre --labeled LABELED/ --out ft   labeled tiles (one sub-folder per class)
  histodiff sample ft --per-class 100 --out samples    class-guided tiles, scored and selected
  histodiff export samples --out augmentation-set      the kept tiles as an ImageFolder set
  histodiff demo                                  all of it on an embedded image (minutes on a CPU)

Every command's options and defaults: histodiff COMMAND --help. Reference: docs/cli.md in the
project's repository (generated from the same options)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``histodiff: error: ...`` and exit code 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"histodiff: error: {message} (see `{self.prog} --help`)\n")


# -- from dataclass fields to arguments and back --------------------------------------------------

def _default_text(f) -> str:
    from .core.base.options import default_of

    d = default_of(f)
    if d is None or "default" in f.metadata["help"]:
        return ""
    if isinstance(d, bool):
        return " (default: on)" if d else " (default: off)"
    if isinstance(d, (list, tuple)):
        return f" (default: {' '.join(map(str, d))})" if d else ""
    return f" (default: {d})"


def escaped(text: str) -> str:
    """Help text as argparse wants it: argparse %-formats help strings, so a literal ``%`` is ``%%``."""
    return text.replace("%", "%%")


ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")  # :func:`name`, :class:`~pkg.Name` (shown as Name)
LITERAL = re.compile(r"``([^`]+)``")


def plain_doc(text: str, cls=None) -> str:
    """A docstring as plain text for ``--help``: one paragraph, reST roles and literals unwrapped, a
    literal that names a field of ``cls`` shown as its flag (``autoencoder`` -> ``--autoencoder``)."""
    by_name = {f.name: f for f, _ in option_fields(cls)} if cls is not None else {}
    text = ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
    text = LITERAL.sub(lambda m: flag_of(by_name[m.group(1)]) if m.group(1) in by_name else m.group(1), text)
    return " ".join(text.split())


def flag_of(f) -> str:
    """``--field-name`` (``-n`` for a one-letter field)."""
    return "-" + f.name if len(f.name) == 1 else "--" + f.name.replace("_", "-")


def option_fields(cls) -> list[tuple[dataclasses.Field, type]]:
    """The CLI's fields of an options class, nested option groups flattened, with their types."""
    from .core.base.options import default_of, fields

    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if not f.metadata["cli"]:
            continue
        if dataclasses.is_dataclass(default_of(f)):
            out += option_fields(type(default_of(f)))
        else:
            out.append((f, hints[f.name]))
    return out


def _add_field(parser, f, tp) -> None:
    from .core.base.options import field_type

    m = f.metadata
    base, _, many = field_type(tp)
    kw = dict(help=escaped(m["help"] + _default_text(f)))
    if m["choices"]:
        kw["choices"] = list(m["choices"])
    if m["metavar"]:
        kw["metavar"] = m["metavar"]
    if m["positional"]:
        parser.add_argument(f.name, type=base, nargs="+" if many else None, **kw)
        return
    kw.update(dest=f.name, default=None)
    if base is bool:
        kw["action"] = argparse.BooleanOptionalAction if f.default is not False else "store_true"
    elif many:
        kw.update(type=base, nargs="+", action="extend")
    else:
        kw["type"] = base
    if m.get("aliases"):
        kw["type"] = lambda s, _a=m["aliases"]: _a.get(s, s)
    target = parser
    if m["consts"]:
        target = parser.add_mutually_exclusive_group(required=False)
    target.add_argument(flag_of(f), *m["flags"], required=m["required"] and not m["consts"], **kw)
    for flag, value in m["consts"].items():
        same = (flag_of(f) if value else "--no-" + f.name.replace("_", "-")) if isinstance(value, bool) \
            else f"{flag_of(f)} {value}"
        target.add_argument(flag, dest=f.name, action="store_const", const=value,
                            help=escaped(f"same as {same}"))


def add_options(parser, cls) -> None:
    """Arguments for every CLI field of ``cls`` (nested option groups as argument groups)."""
    from .core.base.options import default_of, fields

    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if not f.metadata["cli"]:
            continue
        nested = default_of(f)
        if dataclasses.is_dataclass(nested):
            group = parser.add_argument_group(f.metadata["help"])
            for g, tp in option_fields(type(nested)):
                _add_field(group, g, tp)
        else:
            _add_field(parser, f, hints[f.name])


def build_options(cls, ns):
    """The options object that parsed arguments describe (fields not given keep their defaults)."""
    from .core.base.options import default_of, fields

    values = {}
    for f in fields(cls):
        d = default_of(f)
        if dataclasses.is_dataclass(d):
            values[f.name] = build_options(type(d), ns)
            continue
        v = getattr(ns, f.name, None)
        if v is not None:
            values[f.name] = v
    return cls(**values)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .core.jobs import JOBS

    parser = Parser(prog="histodiff", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=WORKFLOW,
                    description="Class-guided latent diffusion for histopathology tile augmentation "
                    "(HistoDiffusion).")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for job in JOBS:
        cls = job.options_class()
        p = sub.add_parser(job.name, help=escaped(job.help), description=_description(cls, job))
        add_options(p, cls)
        p.set_defaults(job=job)
    return parser


def _description(cls, job) -> str:
    """The command's description: its options class's docstring (less its ``histodiff NAME:`` lead) as
    plain text; argparse %-formats a description only where it holds ``%(prog)``."""
    text = " ".join((cls.__doc__ or job.help).split())
    text = text.split(": ", 1)[1] if text.startswith("``histodiff") else text
    return plain_doc(text, cls).replace("%(", "%%(")


# -- running a job --------------------------------------------------------------------------------

def drain(gen, cls=None):
    """Run a core generator to its end with a tqdm progress bar per stage (warnings printed, their
    options named as ``cls``'s flags); return its result."""
    from tqdm import tqdm

    from .core.base.devices import is_main_process
    from .core.base.events import run_to_end

    bars = {}

    def show(event):
        if event.stage == "warning":
            if is_main_process():
                print(f"histodiff: warning: {render(event.message, cls)}", file=sys.stderr)
            return
        bar = bars.get(event.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[event.stage] = tqdm(total=event.total, desc=event.stage, unit="step",
                                           disable=not is_main_process(), dynamic_ncols=True)
        bar.update(event.step - bar.n)
        post = {} if event.loss is None else {"loss": f"{event.loss:.4f}"}
        if "psnr" in event.metrics:
            post["psnr"] = f"{event.metrics['psnr']:.2f}"
        if post:
            bar.set_postfix(post, refresh=False)

    try:
        return run_to_end(gen, show)
    finally:
        for bar in bars.values():
            bar.close()
        gen.close()


def render(text: str, cls=None) -> str:
    """A core message with its option references shown as the flags of ``cls`` (a job's options)."""
    from .core.base.errors import refs

    by_name = {f.name: f for f, _ in option_fields(cls)} if cls is not None else {}

    def show_field(name):
        return flag_of(by_name[name]) if name in by_name else "--" + name.replace("_", "-")

    def show_value(name, value):
        f = by_name.get(name)
        for flag, const in (f.metadata["consts"] if f is not None else {}).items():
            if str(const).lower() == value.lower():
                return flag
        if value.lower() in ("true", "false"):
            return show_field(name) if value.lower() == "true" else "--no-" + name.replace("_", "-")
        return f"{show_field(name)} {value}"

    return refs(text, show_field, show_value)


def main(argv=None) -> int:
    from .core.base.devices import is_main_process
    from .core.base.errors import HistodiffError
    from .core.base.options import OptionError

    args = build_parser().parse_args(argv)
    job = args.job
    cls = job.options_class()
    try:
        opts = build_options(cls, args)
        result = drain(job.run(opts), cls)
    except OptionError as e:
        print(f"histodiff: error: {e.render(lambda name: render('{opt:' + name + '}', cls))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HistodiffError as e:
        print(f"histodiff: error: {render(e.raw, cls)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"histodiff: interrupted; {job.interrupted}".rstrip("; "), file=sys.stderr)
        return 130
    if is_main_process() and result and result.get("message"):
        print(render(result["message"], cls))
    return 0
