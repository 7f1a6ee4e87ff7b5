"""The ``imgclust`` command line registers, in a process, only the command it was started for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imgclust.cli import COMMANDS

# a fresh process started as ``imgclust ARGS``: the command modules it imported
PROBE = (
    "import json, sys; sys.argv = ['imgclust', *sys.argv[1:]]; import imgclust.cli; "
    "print(json.dumps(sorted(set(imgclust.cli.COMMANDS.values()) & set(sys.modules))))"
)


@pytest.mark.slow  # a fresh Python process per case
@pytest.mark.parametrize(
    "args, expected",
    [
        (["split", "--in", "x", "--out", "y"], ["imgclust.stages.split"]),
        (["scan-k", "--help"], ["imgclust.tools.scan_k"]),
        (["--help"], sorted(COMMANDS.values())),
        (["no-such-command"], sorted(COMMANDS.values())),
    ],
)
def test_a_process_imports_only_the_module_of_its_command(args, expected):
    """Each stage process paid about 0.06 s for the other 14 modules; help and a mistyped command
    (which Typer answers with the list) still see every command."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected


@pytest.mark.slow  # a fresh Python process
def test_a_lone_registered_command_is_still_run_by_its_name():
    """Typer runs an app of one command without its name (``imgclust --in x``): the app stays a group."""
    code = "import sys; sys.argv = ['imgclust', 'split', '--help']; from imgclust.cli import app; app()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: imgclust split [OPTIONS]" in proc.stdout and "--in" in proc.stdout
