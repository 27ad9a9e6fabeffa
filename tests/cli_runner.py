"""Run the ``sdpalab`` command in-process, as a user would type it."""

import sys

import pytest


def run_cli(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``sdpalab ARGV...``."""
    from sdpalab.cli import main

    sys_argv, sys.argv = sys.argv, ["sdpalab", *map(str, argv)]
    try:
        with pytest.raises(SystemExit) as done:
            main()
    finally:
        sys.argv = sys_argv
    out, err = capsys.readouterr()
    return done.value.code, out, err
