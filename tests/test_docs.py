"""The documentation agrees with the code. Fast: it parses the docs and the CLI, it never runs a job.

- docs/cli.md's generated tables are what ``docs/cli_reference.py`` makes from the parser today;
- every option string of every command (aliases and ``--no-`` forms included) is in docs/cli.md,
  and every ``--flag`` docs/cli.md mentions exists;
- every ``histodiff COMMAND ...`` line in the docs and the README uses flags of that command, and
  the complete ones parse;
- module paths, ``core/...py`` files and ``from napari_histodiff... import`` names quoted in the docs exist.

When the first test fails, run ``python docs/cli_reference.py`` and review the diff of docs/cli.md.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLI_MD = DOCS / "cli.md"
README = ROOT / "README.md"
PACKAGE = ROOT / "src" / "napari_histodiff"
PAGES = sorted(DOCS.glob("*.md")) + [README]
# docs/napari.md is maintained with the widgets; its module paths are checked there, not here.
MODULE_PAGES = [p for p in PAGES if p.name != "napari.md"]
# flags of other programs that docs/cli.md quotes (accelerate launch, torchrun)
EXTERNAL_FLAGS = {"--multi_gpu", "--num_processes", "--num_machines", "--nproc_per_node", "--mpirun_hostfile",
                  "--cpu"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")
SET_UP = [
    'python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e . && .venv/bin/histodiff demo',
    'python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e ".[testing]" && xvfb-run -a '
    '.venv/bin/python -m pytest -q',
]


def _reference():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def parser():
    from napari_histodiff.cli import build_parser

    return build_parser()


@pytest.fixture(scope="module")
def commands(parser) -> dict[str, argparse.ArgumentParser]:
    return _reference().subparsers(parser)


def _top_flags(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _all_flags(parser, commands) -> set[str]:
    ref = _reference()
    return _top_flags(parser) | {s for sub in commands.values() for s in ref.option_strings(sub)} | {"--help"}


# -- the generated reference ----------------------------------------------------------------------

def test_generated_reference_is_up_to_date(parser):
    text = CLI_MD.read_text(encoding="utf-8")
    assert _reference().render(text, parser) == text, (
        "docs/cli.md is out of date with the CLI: run `python docs/cli_reference.py` and review the diff")


def test_every_command_has_a_section_with_its_options(commands):
    text = CLI_MD.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)
    for name in commands:
        section = next((s for s in sections if s.split("\n", 1)[0].strip() == name), None)
        assert section is not None, f"docs/cli.md has no '## {name}' section"
        assert f"<!-- BEGIN GENERATED: options {name} " in section, f"the options of {name} are not in its section"


def test_every_cli_option_is_documented(parser, commands):
    text = CLI_MD.read_text(encoding="utf-8")
    missing = [f"{name} {flag}" for name, sub in commands.items() for flag in _reference().option_strings(sub)
               if f"`{flag}`" not in text]
    missing += [flag for flag in _top_flags(parser) - {"-h", "--help"} if f"histodiff {flag}" not in text]
    assert not missing, f"docs/cli.md does not mention: {', '.join(missing)}"


def test_every_documented_flag_exists(parser, commands):
    known = _all_flags(parser, commands) | EXTERNAL_FLAGS
    stale = sorted(set(FLAG.findall(CLI_MD.read_text(encoding="utf-8"))) - known)
    assert not stale, f"docs/cli.md names flags that `histodiff` does not have: {', '.join(stale)}"


# -- command lines anywhere in the docs --------------------------------------------------------------

COMMAND = re.compile(r"(?<![\w.-])(?:histodiff|-m napari_histodiff)[ \t]+([a-z][a-z-]*|--?[a-z-]+)(.*)", re.S)


def _command_lines(path: Path):
    """(text, complete) of every ``histodiff ...`` use: lines of code blocks (complete: they should parse)
    and inline code spans (fragments: only their flags are checked)."""
    text = path.read_text(encoding="utf-8")
    out = []
    blocks = re.split(r"^```[^\n]*\n", text, flags=re.M)
    for k, chunk in enumerate(blocks):
        if k % 2:  # inside a fenced block
            for line in chunk.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].split(" # ")[0].strip()
                if COMMAND.search(line):
                    out.append((line, True))
        else:
            out += [(span, False) for span in re.findall(r"`([^`]+)`", chunk) if COMMAND.search(span)]
    return out


def _check_line(line: str, complete: bool, parser, commands) -> str | None:
    m = COMMAND.search(line)
    name, rest = m.group(1), m.group(2)
    if name.startswith("-"):
        return None if name in _top_flags(parser) else f"unknown option {name}"
    if name not in commands:
        return f"unknown command {name!r}"
    flags = set(FLAG.findall(rest)) | set(re.findall(r"(?<![\w-])-[a-z](?![\w-])", rest))
    own = set(_reference().option_strings(commands[name])) | {"-h", "--help"}
    wrong = sorted(flags - own)
    if wrong:
        return f"`histodiff {name}` has no {', '.join(wrong)}"
    placeholder = any(t in rest for t in ("[", "]", "|", "...", "COMMAND")) or not complete
    if not placeholder:
        try:
            parser.parse_args([name, *shlex.split(rest)])
        except SystemExit as e:
            return f"does not parse (exit {e.code})"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_command_lines_use_real_flags(page, parser, commands, capsys):
    problems = []
    for line, complete in _command_lines(page):
        problem = _check_line(line, complete, parser, commands)
        if problem:
            problems.append(f"{line!r}: {problem}")
    capsys.readouterr()
    assert not problems, f"{page.name}:\n" + "\n".join(problems)


def test_command_lines_are_found():
    lines = [line for line, complete in _command_lines(README) if complete]
    assert any(line.startswith("histodiff export") and "--append" in line for line in lines)
    assert len(lines) >= 10


# -- module paths ------------------------------------------------------------------------------------

def _module_file(parts: list[str]) -> Path | None:
    base = PACKAGE.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _names(path: Path) -> set[str]:
    """Names defined at the top level of a module (functions, classes, assignments, imports)."""
    names = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return names


def _resolve(dotted: str) -> bool:
    """Whether ``napari_histodiff.a.b.name`` (a module, or a name in one) exists."""
    parts = dotted.split(".")[1:]
    for k in range(len(parts), -1, -1):
        module = _module_file(parts[:k])
        if module is None:
            continue
        rest = parts[k:]
        return not rest or rest[0] in _names(module)
    return False


def _quoted_paths(text: str) -> set[str]:
    found = set(re.findall(r"(?<![\w.])napari_histodiff(?:\.[A-Za-z_]\w*)+", text))
    found |= {"napari_histodiff." + m for m in re.findall(r"(?<![\w./])(core(?:\.[A-Za-z_]\w*)+)", text)}
    return found


@pytest.mark.parametrize("page", MODULE_PAGES, ids=lambda p: p.name)
def test_module_paths_exist(page):
    text = page.read_text(encoding="utf-8")
    missing = sorted(p for p in _quoted_paths(text) if not _resolve(p))
    files = set(re.findall(r"(?<![\w/])(?:src/napari_histodiff/)?(core/[\w/]+\.py)", text))
    missing += sorted(f for f in files if not (PACKAGE / f).is_file())
    for block in re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_histodiff"):
                missing += [f"{node.module}.{a.name}" for a in node.names if not _resolve(f"{node.module}.{a.name}")]
    assert not missing, f"{page.name} quotes paths that do not exist: {', '.join(missing)}"


def test_module_path_check_catches_stale_paths():
    assert _resolve("napari_histodiff.core.formats.bundle.load_bundle")
    assert _resolve("napari_histodiff.core.models.unet")
    assert _resolve("napari_histodiff.open_model")
    assert not _resolve("napari_histodiff.core.bundle.load_bundle")
    assert not _resolve("napari_histodiff.core.formats.bundle.no_such_name")


# -- other promises of the docs -----------------------------------------------------------------------

def test_readme_set_up_commands_are_unchanged():
    text = README.read_text(encoding="utf-8")
    for command in SET_UP:
        assert f"\n{command}\n" in text, f"README.md lost its set-up command: {command}"



# -- links between the pages ------------------------------------------------------------------------

def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    heads = re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_to_sections_exist(page):
    broken = []
    for target, anchor in re.findall(r"\]\(([\w./-]*?\.md|)#([\w-]+)\)", page.read_text(encoding="utf-8")):
        linked = page if not target else (page.parent / target).resolve()
        if not linked.is_file() or anchor not in _anchors(linked):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{page.name} links to sections that do not exist: {', '.join(broken)}"
