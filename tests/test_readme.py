"""The README stays true: its Python example runs, and so do its guppy-data commands."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_python_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)[:1]
    exec(compile(code, "README.md", "exec"), {})


def test_data_commands_run():
    commands = [line.split("#")[0].strip() for line in README.splitlines() if line.startswith("guppy-data ")]
    assert len(commands) == 3
    for cmd in commands:
        args = shlex.split(cmd)[1:]
        r = subprocess.run([sys.executable, "-m", "guppy.data_cli", *args], capture_output=True, text=True,
                           timeout=180, cwd=Path(__file__).parents[1], env=os.environ | {"PYTHONPATH": os.getcwd()})
        assert r.returncode == 0, (cmd, r.stderr)
        assert "eval_pairs_in_train" in r.stdout
