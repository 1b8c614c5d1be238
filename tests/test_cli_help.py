"""The first things a newcomer types: ``crysdiff``, ``crysdiff --help`` and every verb's ``--help``.

Run as subprocesses (the installed entry point's code path, with a fresh interpreter), so a help
string argparse cannot format, or a verb module that fails to import, breaks this test and not a
user's first command. The verbs come from the parser itself: a new verb is covered automatically.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from crysdiff.cli import build_parser


def _verbs() -> list[str]:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(subparsers.choices)


VERBS = _verbs()


def _crysdiff(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "crysdiff", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_parser_lists_every_verb():
    assert {"predict", "finetune", "pretrain", "sample", "calibrate", "data"} <= set(VERBS)


@pytest.mark.parametrize("args", [[], ["--help"], ["-h"]], ids=["bare", "--help", "-h"])
def test_top_level_help_lists_the_verbs(args):
    result = _crysdiff(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_help(verb):
    result = _crysdiff(verb, "--help")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert f"crysdiff {verb}" in result.stdout and "Example" in result.stdout
