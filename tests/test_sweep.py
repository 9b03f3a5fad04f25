"""guppy-sweep: the grid, --list, flags checked before anything exists, a failed run among good
ones, Ctrl-C and SIGKILL mid-sweep then the same command again."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guppy.run.format import SWEEP_FILE, list_checkpoints, state_path
from guppy.train.sweep import parse_vary, plan, run_name
from tests.conftest import tiny_sweep_flags

ROOT = Path(__file__).resolve().parents[1]


def sweep(*args, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "guppy.train.sweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=os.environ | {"PYTHONPATH": str(ROOT)}, **kw)


def status(folder: Path) -> dict[str, str]:
    return {r["name"]: r["status"] for r in json.loads((folder / SWEEP_FILE).read_text())["runs"]}


def test_grid_names_and_list(tmp_path):
    r = sweep("--name", "study", "--vary", "lr=3e-3,3e-4", "--vary", "batch-size=8,16", "--seeds", "0,1", "--list",
              "--", "--preset", "tiny", "--steps", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 8 and not any(tmp_path.iterdir())  # --list creates nothing
    first = shlex.split(lines[0])
    assert first[:5] == ["guppy-train", "--preset", "tiny", "--steps", "5"]
    assert first[first.index("--runs-dir") + 1] == str(Path("runs") / "study")
    names = [shlex.split(x)[-1] for x in lines]
    assert names[0] == "lr-3e-3__batch_size-8__seed-0" and names[-1] == "lr-3e-4__batch_size-16__seed-1"
    assert len(set(names)) == 8
    for line in lines:
        args = shlex.split(line)
        assert "--record" in args and "--quiet" in args
        assert args[args.index("--lr") + 1] in ("3e-3", "3e-4") and args[args.index("--seed") + 1] in ("0", "1")
    # the same line again gives the same names: a re-run finds its runs
    again = sweep("--name", "study", "--vary", "lr=3e-3,3e-4", "--vary", "batch-size=8,16", "--seeds", "0,1", "--list",
                  "--", "--preset", "tiny", "--steps", "5", cwd=tmp_path)
    assert again.stdout == r.stdout


def test_names_are_filesystem_safe_and_booleans_become_flags():
    assert run_name({"persona": "tests/data/a b.toml", "lr": "3e-3"}) == "persona-tests_data_a_b.toml__lr-3e-3"
    assert parse_vary("--n-heads=1,4") == ("n_heads", ["1", "4"])
    runs = plan("s", [("record_log_spaced", ["true", "false"])], [], ["--no-record"])
    assert "--record-log-spaced" in runs[0].flags and "--no-record-log-spaced" in runs[1].flags
    assert "--record" not in runs[0].flags  # the base said --no-record


def test_settings_that_change_together_are_one_axis():
    axis = parse_vary("batch-size/grad-accum=64/1,16/4,16/1")
    assert axis == ("batch_size/grad_accum", ["64/1", "16/4", "16/1"])
    runs = plan("batch", [axis], ["0", "1"], ["--preset", "tiny", "--steps", "5"])
    assert [r.name for r in runs][:3] == ["batch_size-64__grad_accum-1__seed-0", "batch_size-64__grad_accum-1__seed-1",
                                          "batch_size-16__grad_accum-4__seed-0"]
    assert len(runs) == 6 and runs[2].settings == {"batch_size": "16", "grad_accum": "4", "seed": "0"}
    flags = runs[2].flags
    assert flags[flags.index("--batch-size") + 1] == "16" and flags[flags.index("--grad-accum") + 1] == "4"


@pytest.mark.parametrize("args, message", [
    (["--vary", "n_hedas=1,4"], "not a guppy-train setting"),
    (["--vary", "lr=3e-3,-1"], "run lr--1: lr: bad value"),
    (["--vary", "lr"], "expected KEY=V1,V2"),
    (["--vary", "lr=1e-3,1e-3"], "given twice"),
    (["--vary", "precision=fp32,fp64"], "invalid choice"),
    (["--vary", "lr=1e-3", "--", "--lr", "3e-3"], "both varied and given after --"),
    (["--vary", "lr=1e-3", "--", "--bogus"], "unrecognized arguments: --bogus"),
    (["--vary", "lr=1e-3", "--", "--run-name", "x"], "names and places its runs itself"),
    (["--vary", "seed=1,2", "--seeds", "0,1"], "varied twice"),
    (["--vary", "batch_size/grad_accum=64/1,16"], "needs 2 parts joined by /"),
    (["--vary", "batch_size/grad_accum=64/1", "--vary", "grad_accum=1,2"], "varied twice"),
    (["--vary", "batch_size/grad_acum=64/1"], "not a guppy-train setting"),
    ([], "nothing to sweep"),
    (["--vary", "n_heads=3,4", "--", "--preset", "tiny"], "d_model 32 does not split into 3 heads"),  # the model must build
    (["--vary", "lr=1e-3", "--", "--record-hooks", "blocks.*.attn.hook_patern"], "matches no hook point"),
])
def test_bad_flags_are_one_line_and_create_nothing(tmp_path, args, message):
    own, base = (args[:args.index("--")], args[args.index("--"):]) if "--" in args else (args, [])
    r = sweep("--name", "bad", *own, *base, cwd=tmp_path)
    assert r.returncode in (1, 2) and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_failed_and_diverged_runs_do_not_stop_the_others(tmp_path):
    """persona x lr: a persona file that is missing fails both its runs; lr 1e6 diverges (NaN at step 2)."""
    missing = str(tmp_path / "no-such-persona.toml")
    base = tiny_sweep_flags(steps=6)
    persona = base.index("--persona")
    del base[persona:persona + 2]  # varied instead
    args = ["--name", "mixed", "--vary", f"persona={missing},{base_persona()}", "--vary", "lr=1e6,3e-3",
            "--", *base, "--no-record", "--min-lr", "0", "--warmup-steps", "0", "--grad-clip", "0"]
    r = sweep(*args, cwd=tmp_path)
    assert r.returncode == 1 and "failed" in r.stdout, r.stderr  # some failed: not a clean sweep
    folder = tmp_path / "runs" / "mixed"
    got = status(folder)
    assert sorted(got.values()) == ["diverged", "failed", "failed", "finished"]
    assert all(v == "failed" for k, v in got.items() if "no-such" in k)
    assert got[next(k for k in got if "no-such" not in k and k.endswith("lr-1e6"))] == "diverged"
    entry = next(x for x in json.loads((folder / SWEEP_FILE).read_text())["runs"] if "no-such" in x["name"])
    assert "no-such-persona" in entry["message"] and entry["returncode"] == 1
    assert "2 failed" in r.stdout and "1 diverged" in r.stdout and "1 finished" in r.stdout
    again = sweep(*args, cwd=tmp_path)  # failed runs are tried again; a diverged one is an outcome
    assert again.returncode == 1 and again.stderr.count("started") == 2 and "2 of 4 runs done" in again.stderr


def base_persona() -> str:
    flags = tiny_sweep_flags()
    return flags[flags.index("--persona") + 1]


def wait_for(predicate, timeout=240, every=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError("timed out waiting")


def resumable(run_dir: Path) -> bool:
    return any(state_path(p).exists() for p in list_checkpoints(run_dir).values())


def files_of(run_dir: Path) -> dict:
    return {str(f.relative_to(run_dir)): (f.stat().st_mtime_ns, f.stat().st_size) for f in run_dir.rglob("*") if f.is_file()}


@pytest.mark.slow
def test_ctrl_c_then_sigkill_mid_sweep_and_the_same_command_completes(tmp_path):
    """Run 0 is stopped by Ctrl-C (a clean checkpoint), run 1 by SIGKILL of the whole sweep after a
    checkpoint; each time the same command continues. Finished runs are never touched again, and a
    resumed run ends with the same weights as one never stopped."""
    args = ["--name", "seeds", "--seeds", "0,1,2", "--parallel", "1", "--", *tiny_sweep_flags(steps=120), "--eval-every", "20",
            "--record-every", "30"]
    cmd = [sys.executable, "-m", "guppy.train.sweep", *args]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    folder = tmp_path / "runs" / "seeds"

    def start():
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)

    # 1. Ctrl-C while seed-0 trains: it saves a checkpoint, the sweep exits 130, nothing else started
    p = start()
    wait_for(lambda: resumable(folder / "seed-0"))
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert status(folder) == {"seed-0": "interrupted", "seed-1": "pending", "seed-2": "pending"}
    assert "run the same command again" in err

    # 2. again: seed-0 resumes and finishes; SIGKILL everything once seed-1 has a checkpoint
    p = start()
    wait_for(lambda: resumable(folder / "seed-1") and status(folder).get("seed-1") == "running")
    child = next(r["pid"] for r in json.loads((folder / SWEEP_FILE).read_text())["runs"] if r["name"] == "seed-1")
    os.kill(p.pid, signal.SIGSTOP)  # the sweep cannot see its run die...
    os.kill(child, signal.SIGKILL)
    os.kill(p.pid, signal.SIGKILL)  # ...and dies too, as on a power cut
    p.wait(timeout=30)
    assert status(folder)["seed-0"] == "finished" and status(folder)["seed-1"] == "running"
    finished = files_of(folder / "seed-0")

    # 3. the same command completes the sweep
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert status(folder) == {"seed-0": "finished", "seed-1": "finished", "seed-2": "finished"}
    assert files_of(folder / "seed-0") == finished
    assert "resumed seed-1" in r.stderr and "started seed-2" in r.stderr and "seed-0" not in r.stderr
    log = (folder / "_logs" / "seed-1.log").read_text()
    assert log.count("--resume") == 1

    # a resumed run equals one never stopped (the same flags, straight through)
    straight = json.loads((folder / SWEEP_FILE).read_text())["runs"][1]["flags"]
    straight[straight.index("--runs-dir") + 1] = str(tmp_path / "straight")
    subprocess.run([sys.executable, "-m", "guppy.train.trainer", *straight], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=300)
    from safetensors.torch import load_file

    a = load_file(str(list(list_checkpoints(folder / "seed-1").values())[-1]))
    b = load_file(str(list(list_checkpoints(tmp_path / "straight" / "seed-1").values())[-1]))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def readme_section() -> str:
    return (ROOT / "docs" / "sweeps.md").read_text()


@pytest.mark.slow
def test_the_readme_sweep_section_runs(tmp_path):
    """The README's lines with the tiny recipe after `--`: the sweep, --list into xargs, the SLURM
    line's own command picking its run, and the compare_runs example on the result."""
    import re

    import guppy

    section = readme_section()
    lines = [x for block in re.findall(r"```bash\n(.*?)```", section, re.S) for x in block.splitlines()]
    tiny = shlex.join(tiny_sweep_flags(steps=6))
    env = os.environ | {"PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def shell(line: str, cwd: Path):
        if line.startswith("guppy-sweep "):  # the tiny recipe as the base flags; the module, as no install is assumed
            own, _, rest = line.partition(" -- ")
            line = f"{shlex.quote(sys.executable)} -m guppy.train.sweep {own[len('guppy-sweep '):]} -- {tiny}" + \
                (rest[rest.index(" >"):] if " >" in rest else "")
        r = subprocess.run(["bash", "-c", line.split("  #")[0]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (line, r.stderr[-2000:])
        return r

    sweep_line, list_line, xargs_line, slurm_line = lines
    (tmp_path / "a").mkdir()
    shell(sweep_line, tmp_path / "a")
    assert set(status(tmp_path / "a" / "runs" / "lr-study").values()) == {"finished"}

    (tmp_path / "b").mkdir()
    shell(list_line, tmp_path / "b")
    listed = (tmp_path / "b" / "lr-study.txt").read_text().splitlines()
    assert len(listed) == 4 and not (tmp_path / "b" / "runs").exists()
    shell(xargs_line, tmp_path / "b")
    folder = tmp_path / "b" / "runs" / "lr-study"
    assert sorted(guppy.compare_runs(folder).runs) == sorted(shlex.split(x)[-1] for x in listed)
    assert all(guppy.open_run(d).status == "finished" for d in folder.iterdir() if d.is_dir())
    wrapped = shlex.split(slurm_line.split("  #")[0])[-1]  # what one array task runs, less its `| sh`
    picked = subprocess.run(["bash", "-c", wrapped.removesuffix("| sh")], cwd=tmp_path / "b", capture_output=True,
                            text=True, env=env | {"SLURM_ARRAY_TASK_ID": "2"})
    assert picked.stdout.strip() == listed[1]

    readme = (ROOT / "README.md").read_text()
    readme_compare = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "compare_runs" in b]
    assert len(readme_compare) == 1
    for code in re.findall(r"```python\n(.*?)```", section, re.S) + readme_compare:  # the page's and the README's
        code = code.replace('"runs/lr-study"', repr(str(tmp_path / "a" / "runs" / "lr-study")))
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
        cmp = scope["cmp"]
        assert cmp.varied == ["lr", "seed"] and len(cmp.final("eval_loss")) == 2
