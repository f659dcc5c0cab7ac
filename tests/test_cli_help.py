"""Help that explains: every flag and argument of every verb says what it does, and its default
where it has one; ``strata version``/``--version``; no silent abbreviation of flags."""

from __future__ import annotations

import argparse
import json
import platform

from helpers import strata

from runner.cli import parser


def _verbs(p: argparse.ArgumentParser, prefix: str = "strata"):
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub.prog.endswith(f" {name}"):  # aliases point at the same parser: once
                    yield f"{prefix} {name}", sub
                    yield from _verbs(sub, f"{prefix} {name}")


def test_every_flag_and_argument_is_explained_with_its_default():
    missing, no_default = [], []
    verbs = dict(_verbs(parser()))
    assert {"strata run", "strata exec", "strata ps", "strata images", "strata version"} <= set(verbs)
    for verb, sub in verbs.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                missing.append(f"{verb} {name}")
            elif action.default not in (None, False, argparse.SUPPRESS) and "default" not in action.help:
                no_default.append(f"{verb} {name}")
    assert missing == [] and no_default == []


def test_run_help_reads_like_dockers(root):
    out = strata(root, "run", "--help").out
    assert "-i, --interactive" in out and "keep STDIN open" in out
    assert "(default bridge)" in out and "(default: the image's)" in out
    out = strata(root, "exec", "--help").out
    for flag in ("-d, --detach", "-i, --interactive", "-t, --tty", "-e, --env", "-w, --workdir", "-u, --user"):
        assert flag in out, flag


def test_version_says_what_strata_runs_on(root):
    out = strata(root, "version").out
    assert (
        "Version:" in out and f"Python:  {platform.python_version()}" in out and f"Kernel:  {platform.release()}" in out
    )
    info = json.loads(strata(root, "version", "--format", "json").out)
    assert info["Root"] == root and info["Libfuse"][0].isdigit() and info["Pyfuse3"][0].isdigit()
    assert info["Cgroups"] in ("v1", "v2", "none (not root)")
    res = strata(root, "--version")
    assert res.out == f"strata version {info['Version']}\n" and res.err == ""


def test_long_flags_are_never_abbreviated(root):
    res = strata(root, "run", "--na", "x", "bb", "true", check=False)
    assert res.code == 125 and res.err.splitlines() == ["strata: unknown flag: --na", "See 'strata run --help'."]
    res = strata(root, "ps", "--al", check=False)
    assert res.code == 125 and res.err.splitlines()[0] == "strata: unknown flag: --al"
    assert strata(root, "images", "--quiet").out == ""  # the whole name still works
