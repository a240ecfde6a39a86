"""Write the generated parts of docs/cli.md from the `histodiff` parser.

    .venv/bin/python docs/cli_reference.py            rewrite the generated blocks of docs/cli.md
    .venv/bin/python docs/cli_reference.py --check    exit 1 if docs/cli.md is out of date

docs/cli.md has one generated block per command, between the lines

    <!-- BEGIN GENERATED: options COMMAND -->
    <!-- END GENERATED: options COMMAND -->

plus the command list (``commands``) and the messages after Ctrl-C (``interrupted``). Everything
outside the blocks is hand-written. The tables come from ``napari_histodiff.cli.build_parser()``
(option strings, help, choices, defaults), the jobs' option fields (limits) and
``core.jobs.JOBS``, so the reference cannot disagree with ``histodiff COMMAND --help``. To change
an option, edit its ``option(...)`` field in ``src/napari_histodiff/core`` (the job's options
class), then run this script. tests/test_docs.py fails while the file is stale.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CLI_MD = Path(__file__).resolve().parent / "cli.md"
BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (\w+)(?: ([\w-]+))? [^\n]*-->\n)(.*?)(<!-- END GENERATED: \2(?: \3)? -->)",
                   re.S)
NOTE = "written by docs/cli_reference.py; do not edit by hand"
DEFAULT = re.compile(r"\s*\(default: ([^()]*)\)")
TYPES = {int: "integer", float: "number", str: "text", Path: "path"}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{command: its parser}`` in the order of ``histodiff --help``."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices.items())


def command_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: unescaped(a.help) for a in action._choices_actions}


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of a (sub-)parser, aliases and ``--no-`` forms included, without -h/--help."""
    return [s for a in parser._actions if not isinstance(a, argparse._HelpAction) for s in a.option_strings]


def _fields(sub: argparse.ArgumentParser) -> dict:
    """``{dest: dataclass field}`` of the job behind a sub-parser (for limits the parser does not hold)."""
    from napari_histodiff.cli import option_fields

    job = sub.get_default("job")
    return {f.name: f for f, _ in option_fields(job.options_class())} if job is not None else {}


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _limits(field) -> str:
    if field is None:
        return ""
    lo, hi, open_ = field.metadata.get("min"), field.metadata.get("max"), field.metadata.get("min_open")
    if lo is not None and hi is not None:
        return f" in {'(' if open_ else '['}{_num(lo)}, {_num(hi)}]"
    if lo is not None:
        return f" above {_num(lo)}" if open_ else f", at least {_num(lo)}"
    if hi is not None:
        return f", at most {_num(hi)}"
    return ""


FLAG = re.compile(r"(?<![^\s(])(--?[a-z][a-z0-9-]*)")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("*", "\\*")


def _meaning(text: str) -> str:
    """Help text as a table cell, flags as code (``same as --intent resume``: the whole setting)."""
    if text.startswith("same as "):
        return f"same as `{text[len('same as '):]}`"
    return FLAG.sub(r"`\1`", _cell(text))


def unescaped(text: str | None) -> str:
    """A help text as shown: the parser holds a literal ``%`` as ``%%`` (argparse %-formats help)."""
    return (text or "").replace("%%", "%")


def _row(action: argparse.Action, field) -> str:
    help_text = unescaped(action.help)
    defaults = DEFAULT.findall(help_text)
    meaning = DEFAULT.sub("", help_text).strip()
    many = action.nargs in ("+", "*")
    if not action.option_strings:  # positional
        name = f"`{action.metavar or action.dest}`" + (" ..." if many else "")
        return f"| {name} | {_value(action, field, many)} | required | {_meaning(meaning)} |"
    first, *aliases = action.option_strings
    if isinstance(action, argparse.BooleanOptionalAction):
        name = " / ".join(f"`{s}`" for s in action.option_strings)
    else:
        name = f"`{first}`" + (f" (also {', '.join(f'`{s}`' for s in aliases)})" if aliases else "")
    if action.required:
        default = "required"
    elif isinstance(action, argparse._StoreConstAction) and not isinstance(action, argparse._StoreTrueAction):
        default = ""  # a shortcut: its meaning says what it sets
    elif defaults:
        default = defaults[-1]
    else:
        default = "not set"
    return f"| {name} | {_value(action, field, many)} | {_cell(default)} | {_meaning(meaning)} |"


def _value(action, field, many: bool) -> str:
    if action.choices:
        return ", ".join(f"`{c}`" for c in action.choices)
    if action.nargs == 0:
        return ""
    word = TYPES.get(action.type, "text")
    if action.metavar and action.option_strings:
        word = f"`{action.metavar}`"
    text = word + _limits(field)
    return f"{text} (one or more)" if many else text


def options_table(sub: argparse.ArgumentParser) -> str:
    """The options of one sub-command: arguments and plain options in one table, then a table per
    named option group (``selection rule``, ``how to read a foreign model``)."""
    fields = _fields(sub)
    head = "| option | value | default | meaning |\n| --- | --- | --- | --- |\n"
    plain, named = [], []
    for group in sub._action_groups:
        rows = [_row(a, fields.get(a.dest)) for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not rows:
            continue
        if group.title in ("positional arguments", "options", "optional arguments"):
            plain += rows
        else:
            named.append(f"*{group.title[0].upper()}{group.title[1:]}:*\n\n" + head + "\n".join(rows) + "\n")
    return "\n".join([head + "\n".join(plain) + "\n", *named])


def commands_table(parser: argparse.ArgumentParser) -> str:
    rows = [f"| [`{name}`](#{name}) | {_cell(text)} |" for name, text in command_help(parser).items()]
    return "| command | does |\n| --- | --- |\n" + "\n".join(rows) + "\n"


def interrupted_table() -> str:
    """What each command says after Ctrl-C (exit code 130), from ``core.jobs.JOBS``."""
    from napari_histodiff.core.jobs import JOBS

    rows = [f"| `{job.name}` | `histodiff: interrupted{'; ' + job.interrupted if job.interrupted else ''}` |"
            for job in JOBS]
    return "| command | message |\n| --- | --- |\n" + "\n".join(rows) + "\n"


def render(text: str, parser: argparse.ArgumentParser | None = None) -> str:
    """``text`` (docs/cli.md) with every generated block rewritten."""
    from napari_histodiff.cli import build_parser

    parser = parser or build_parser()
    subs = subparsers(parser)
    found = []

    def block(m):
        kind, name = m.group(2), m.group(3)
        if kind == "commands" and name is None:
            body = commands_table(parser)
        elif kind == "interrupted" and name is None:
            body = interrupted_table()
        elif kind == "options" and name in subs:
            body = options_table(subs[name])
        else:
            raise ValueError(f"{CLI_MD}: unknown generated block {kind} {name or ''}")
        found.append((kind, name))
        begin = f"<!-- BEGIN GENERATED: {kind}{' ' + name if name else ''} ({NOTE}) -->\n"
        return begin + "\n" + body + "\n" + m.group(5)

    out = BLOCK.sub(block, text)
    wanted = [("commands", None), ("interrupted", None), *(("options", n) for n in subs)]
    missing = [" ".join(filter(None, w)) for w in wanted if w not in found]
    if missing:
        raise ValueError(f"{CLI_MD} lacks the generated blocks {', '.join(missing)}; add a pair of lines "
                         "'<!-- BEGIN GENERATED: options COMMAND -->' and '<!-- END GENERATED: options COMMAND -->' "
                         "where each belongs, then run this script")
    if len(found) != len(set(found)):
        raise ValueError(f"{CLI_MD} has a generated block twice")
    return out


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if set(args) - {"--check"}:
        print(__doc__, file=sys.stderr)
        return 2
    check = "--check" in args
    old = CLI_MD.read_text(encoding="utf-8")
    try:
        new = render(old)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    if check:
        if new != old:
            print(f"{CLI_MD} is out of date: run `python docs/cli_reference.py`", file=sys.stderr)
            return 1
        return 0
    if new != old:
        CLI_MD.write_text(new, encoding="utf-8")
        print(f"rewrote the generated blocks of {CLI_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
