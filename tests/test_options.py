"""One definition per option: the CLI is generated from the jobs' options dataclasses, both ways."""

import argparse
import dataclasses
import math

import pytest

from napari_histodiff.cli import build_options, build_parser, flag_of, main, option_fields
from napari_histodiff.core.base.options import OptionError, check, default_of
from napari_histodiff.core.jobs import JOBS


def subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j.name)
def test_every_cli_option_maps_to_a_field_and_back(job):
    p = subparsers()[job.name]
    cls = job.options_class()
    fields = {f.name: f for f, _ in option_fields(cls)}
    dests = {a.dest for a in p._actions if not isinstance(a, argparse._HelpAction)}
    assert dests == set(fields), (dests ^ set(fields))
    for a in p._actions:
        if isinstance(a, argparse._HelpAction) or not a.option_strings:
            continue
        f = fields[a.dest]
        assert a.default is None  # defaults live in the dataclass only
        if not isinstance(a, argparse._StoreConstAction):
            assert flag_of(f) in a.option_strings
            d = default_of(f)
            if d is not None and d != []:
                assert "default" in a.help, (a.option_strings, a.help)  # --help shows every default


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j.name)
def test_options_not_given_keep_the_dataclass_defaults(job, tmp_path):
    cls = job.options_class()
    p = subparsers()[job.name]
    positionals = [a for a in p._actions if not a.option_strings and not isinstance(a, argparse._HelpAction)]
    required = [a for a in p._actions if a.option_strings and a.required]
    argv = [str(tmp_path / a.dest) for a in positionals]
    for a in required:
        argv += [a.option_strings[0], str(tmp_path / a.dest)]
    opts = build_options(cls, p.parse_args(argv))
    given = {a.dest for a in positionals + required}
    for f, _ in option_fields(cls):
        if f.name not in given:
            assert _value(opts, f.name) == default_of(f), f.name


def _value(opts, name):
    for f in dataclasses.fields(opts):
        v = getattr(opts, f.name)
        if f.name == name:
            return v
        if dataclasses.is_dataclass(v) and name in {g.name for g in dataclasses.fields(v)}:
            return getattr(v, name)
    raise KeyError(name)


def test_old_flag_spellings_still_work(tmp_path):
    p = subparsers()
    ns = p["finetune"].parse_args(["b", "--labeled", "l", "--out", "o", "--finetune-unet-steps", "7", "--unet-lr",
                                   "0.5", "--finetune-decoder-steps", "3", "--resume", "--no-ema"])
    opts = build_options(next(j for j in JOBS if j.name == "finetune").options_class(), ns)
    assert (opts.unet_steps, opts.unet_learning_rate, opts.decoder_steps, opts.intent, opts.foreign.ema) == \
        (7, 0.5, 3, "resume", False)
    ns = p["sample"].parse_args(["b", "--out", "o", "--class", "A", "--class", "B", "--from", "d", "--no-select"])
    assert (ns.classes, str(ns.sources), ns.select) == (["A", "B"], "d", False)
    ns = p["export"].parse_args(["s1", "s2", "--out", "o", "--png", "--all", "--append"])
    assert (ns.fmt, ns.only_kept, ns.intent, len(ns.samples)) == ("png", False, "append", 2)


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j.name)
def test_non_finite_numbers_are_refused_by_core(job):
    cls = job.options_class()
    floats = [f for f, tp in option_fields(cls) if "float" in str(tp)]
    for f in floats:
        for bad in (math.nan, math.inf):
            opts = cls()
            target = opts
            for g in dataclasses.fields(opts):  # the field may sit in a nested group
                if dataclasses.is_dataclass(getattr(opts, g.name)) and \
                        f.name in {h.name for h in dataclasses.fields(getattr(opts, g.name))}:
                    target = getattr(opts, g.name)
            setattr(target, f.name, [bad] if "list" in str(_type(cls, f.name)) else bad)
            with pytest.raises(OptionError, match=f"{f.name} must be a finite number"):
                check(opts)


def _type(cls, name):
    return dict((f.name, tp) for f, tp in option_fields(cls))[name]


def test_core_messages_name_the_field_and_the_cli_shows_the_flag(tmp_path, capsys):
    from napari_histodiff.core.train.finetune import FinetuneOptions

    with pytest.raises(OptionError) as e:
        FinetuneOptions(classifier_steps=0).validate()
    assert str(e.value) == "classifier_steps must be at least 1 (got 0)"
    code = main(["finetune", str(tmp_path), "--labeled", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--classifier-steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--classifier-steps must be at least 1" in err and "classifier_steps" not in err
    assert not (tmp_path / "o").exists()


def test_version(capsys):
    from napari_histodiff import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


def test_top_level_help_shows_the_workflow(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert out.index("histodiff pretrain") < out.index("histodiff finetune") < out.index("histodiff sample") \
        < out.index("histodiff export") and "docs/cli.md" in out
