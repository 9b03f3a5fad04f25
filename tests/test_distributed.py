"""torchrun: 2 CPU processes (gloo) train like one process with the same global batch; only rank 0
touches the run folder; a run resumes on another number of ranks. The launch commands are the
README's "Scaling up" ones, with the tiny recipe's flags added (argparse keeps the last value)."""

import csv
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import guppy
from guppy.train.callbacks import Callback
from guppy.train.trainer import start_run
from tests.conftest import tiny_train_config

ROOT = Path(__file__).parents[1]
README = (ROOT / "docs" / "scaling.md").read_text()  # the "Scaling up" page
STEPS = 150  # past one epoch of 144 batches of 4 chats, one of which has a single chat

# Every rank logs what it opens, lists, renames or removes under the runs folder (Python's audit
# hooks): proof that rank 1 never touches the run and that one recorder wrote.
AUDIT = textwrap.dedent("""
    import os, sys
    rank, root, log = os.environ.get("RANK"), os.environ.get("AUDIT_ROOT"), os.environ.get("AUDIT_LOG")
    if rank is not None and root and log:
        events = {"open", "os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.scandir", "os.listdir", "os.truncate"}
        def hook(event, args):
            if event in events and args and isinstance(args[0], (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(args[0]))
                if path.startswith(root):
                    with open(log, "a") as f:
                        f.write(f"{rank} {event} {path}\\n")
        sys.addaudithook(hook)
""")


def readme_commands() -> list[list[str]]:
    """The README's torchrun commands, as argument lists, python -m torch.distributed.run for torchrun."""
    lines = [m.replace("\\\n", " ") for m in re.findall(r"^torchrun (?:.*\\\n)*.*$", README, re.M)]
    assert len(lines) == 2, lines
    return [[sys.executable, "-m", "torch.distributed.run", *shlex.split(line.split("#")[0])[1:]] for line in lines]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def tiny_flags(cfg) -> list[str]:
    names = ("preset", "persona", "n_chats", "vocab_size", "batch_size", "lr", "warmup_steps", "min_lr", "eval_chats",
             "eval_prompts", "log_every", "steps", "device", "precision", "record_inputs", "runs_dir", "run_name")
    flags = [x for n in names for x in (f"--{n.replace('_', '-')}", str(getattr(cfg, n)))]
    return flags + ["--record" if cfg.record else "--no-record", "--quiet"]


def audited_env(tmp_path: Path) -> dict:
    """The environment of a launch in tmp_path: the audit hook on, one thread per worker."""
    (tmp_path / "audit").mkdir(exist_ok=True)
    (tmp_path / "audit" / "sitecustomize.py").write_text(AUDIT)
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path / "audit"), str(ROOT)]), "OMP_NUM_THREADS": "1",
                         "AUDIT_ROOT": str(tmp_path / "runs"), "AUDIT_LOG": str(tmp_path / "audit.log")}


def launch(cmd: list[str], tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=tmp_path, env=audited_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def audit(tmp_path: Path) -> dict[str, list[str]]:
    lines = (tmp_path / "audit.log").read_text().splitlines() if (tmp_path / "audit.log").exists() else []
    by_rank: dict[str, list[str]] = {}
    for line in lines:
        rank, rest = line.split(" ", 1)
        by_rank.setdefault(rank, []).append(rest)
    return by_rank


def rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


# float32 summed in another order: the curves agree to 6 digits for ~60 steps, then drift apart a
# little (by step 150: loss 1.5e-4, grad norm of a 4-chat batch 1.2e-2 at most); a wrong share,
# normalisation or resume position is off by percents from the first rows
RTOL = {"loss": 1e-3, "eval_loss": 1e-3, "grad_norm": 5e-2}


def assert_same_curves(one: list[dict], two: list[dict]):
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for k in ("epoch", "tokens", "lr"):  # the same batches, in the same order, on the same schedule
            assert a[k] == b[k], (k, a, b)
        for k, rtol in RTOL.items():
            if a[k]:
                assert float(b[k]) == pytest.approx(float(a[k]), rel=rtol), (k, a["step"], a[k], b[k])


def assert_same_model(run_a, run_b, step: int = 30, atol: float = 1e-4):
    """The models at `step`, before float drift, compute the same function (compared by output, not
    weight by weight: the key bias gets no gradient, softmax ignores it, and Adam turns float noise
    there into steps). The drift grows about 8x every 15 steps from ~1e-6 at step 15, at a rate that
    depends on the CPU's kernels: the largest log-prob difference was 4e-5 at step 45 on an Intel
    Xeon (AMX), and 1.3e-5 at 30, 1.1e-4 at 45, 3e-4 at 60 on an AMD EPYC (Zen4); a wrong share,
    normalisation or resume position is off by far more from the first steps."""
    a, b = guppy.open_run(run_a), guppy.open_run(run_b)
    tokens = torch.from_numpy(a.watch_tokens)
    with torch.no_grad():
        logp_a, logp_b = (r.model(step)(tokens).log_softmax(-1) for r in (a, b))
    torch.testing.assert_close(logp_a, logp_b, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: the tiny recipe, recorded, in one process. 573 train chats in batches of 4
    leave one batch of a single chat, so rank 1 of 2 once has nothing of its own to train on."""
    cfg = tiny_train_config(tmp_path_factory.mktemp("one"), n_chats=603, batch_size=4, steps=STEPS, record=True,
                            record_inputs=6, run_name="one")
    trainer = start_run(cfg, show_progress=False)
    assert min(len(b) for b in trainer._epoch_steps(0)) == 1
    assert trainer.fit() == "finished"
    return cfg, trainer.run_dir


def test_two_processes_train_like_one(one_process, tmp_path):
    cfg, one = one_process
    standalone = readme_commands()[0]
    assert "--standalone" in standalone
    cmd = [re.sub(r"^--nproc_per_node=\d+$", "--nproc_per_node=2", a) for a in standalone]
    r = launch(cmd + tiny_flags(replace(cfg, runs_dir="runs", run_name="two")), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 ranks, gloo" in r.stderr and r.stdout.count("finished:") == 1, (r.stdout, r.stderr[-2000:])
    two = tmp_path / "runs" / "two"

    single, double = rows(one), rows(two)
    assert_same_curves(single, double)
    assert_same_model(one, two)
    meta = json.loads((two / "run.json").read_text())
    assert meta["status"] == "finished" and meta["world_size"] == 2

    # one recorder wrote: the same snapshots as one process, whole, and nothing else
    names = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    assert names(two) == names(one)
    run = guppy.open_run(two)
    assert list(run.snapshots["step"]) == list(guppy.open_run(one).snapshots["step"])
    assert run.acts("blocks.0.attn.hook_pattern", snapshot="latest").shape[0] == len(run.watch_subset)
    assert run.model("latest") is not None

    touched = audit(tmp_path)
    assert set(touched) == {"0"}, {k: v[:5] for k, v in touched.items()}
    snapshot_renames = [e for e in touched["0"] if e.startswith("os.rename") and "/snapshots/" in e]
    assert len(snapshot_renames) == len(run.snapshot_files)


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.step == self.step:
            raise KeyboardInterrupt


def test_resume_on_two_machines_from_one_process(one_process, tmp_path):
    """Stopped at step 7 in one process, continued by 2 ranks launched as 2 machines (the README's
    multi-node command, both on localhost): the curve and weights are those of the unbroken run."""
    cfg, one = one_process
    cfg = replace(cfg, runs_dir=str(tmp_path / "runs"), run_name="moved")
    parted = start_run(cfg, callbacks=[StopAt(7)], show_progress=False)
    assert parted.fit() == "interrupted" and parted.step == 7

    multi = readme_commands()[1]
    assert "--rdzv-backend=c10d" in multi
    port = free_port()
    cmd = [re.sub(r"^--nproc_per_node=\d+$", "--nproc_per_node=1", a) for a in multi]
    cmd = [re.sub(r"^--rdzv-endpoint=.*$", f"--rdzv-endpoint=localhost:{port}", a) for a in cmd]
    cmd = cmd[:cmd.index("guppy.train.trainer") + 1] + ["--resume", "runs/moved", "--quiet"]
    env = audited_env(tmp_path)
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [n.communicate(timeout=240) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), [o[1][-2000:] for o in outs]
    assert sum(o[0].count("finished:") for o in outs) == 1

    moved = tmp_path / "runs" / "moved"
    assert json.loads((moved / "run.json").read_text())["status"] == "finished"
    assert_same_curves(rows(one), rows(moved))
    assert_same_model(one, moved)
    assert max(guppy.open_run(moved).snapshot_files) == STEPS
    assert set(audit(tmp_path)) == {"0"}  # rank 1 got the checkpoint from rank 0, not from the folder


def test_bad_launches_are_one_line(tmp_path, tiny_cli_args):
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, "-m", "guppy.train.trainer", "--dist-backend", "nccl"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(ROOT)})
        assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
        assert "--dist-backend nccl needs CUDA devices" in r.stderr

    cmd = [re.sub(r"^--nproc_per_node=\d+$", "--nproc_per_node=2", a) for a in readme_commands()[0]]
    cmd = cmd[:cmd.index("guppy.train.trainer") + 1] + tiny_cli_args(tmp_path, steps=5) + ["--batch-size", "1", "--device", "cpu"]
    r = launch(cmd, tmp_path)
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if line.startswith("guppy-train: error:")]
    assert ours == ["guppy-train: error: batch_size: 1 chats per step cannot be shared by 2 ranks; "
                    "--batch-size is the global batch, use 2 or more"], r.stderr[-3000:]
    assert not (tmp_path / "runs").exists()
