"""Training: resume equals never stopping, divergence, Ctrl-C, run files, bad flags."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import guppy
import guppy.train.trainer as train_mod
from guppy.model.transformer import GuppyLM
from guppy.run.format import list_checkpoints, state_path
from guppy.train.callbacks import Callback
from guppy.train.trainer import TrainConfig, build_optimizer, lr_at, pick_precision, start_run
from tests.conftest import tiny_train_config


class StopAt(Callback):
    def __init__(self, step, action):
        self.step, self.action = step, action

    def on_step_end(self, trainer):
        if trainer.step == self.step:
            self.action(trainer)


def interrupt(trainer):
    raise KeyboardInterrupt


def poison(trainer):
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))


def rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def final_weights(run_dir):
    return load_file(str(list(list_checkpoints(run_dir).values())[-1]))


def test_resume_equals_never_stopping(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=16, eval_every=5, log_every=2, grad_accum=2, dropout=0.1)
    whole = start_run(replace(cfg, run_name="whole"), show_progress=False)
    assert whole.fit() == "finished"

    parted = start_run(replace(cfg, run_name="parted"), callbacks=[StopAt(7, interrupt)], show_progress=False)
    assert parted.fit() == "interrupted" and parted.step == 7
    meta = json.loads((parted.run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted" and "--resume" in meta["message"]
    again = start_run(cfg, resume_dir=parted.run_dir, show_progress=False)
    assert again.step == 7
    assert again.fit() == "finished"

    a, b = final_weights(whole.run_dir), final_weights(parted.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rs]
    assert strip(rows(whole.run_dir)) == strip(rows(parted.run_dir))


def test_64x1_and_16x4_take_the_same_chats_per_step_to_the_same_weights(tmp_path):
    """Accumulation is what it claims: a step's chats are one random draw, however it is cut into
    forward passes, so the two configurations differ by float rounding only (fp32, no dropout)."""
    cfg = tiny_train_config(tmp_path, steps=6, eval_prompts=0, dropout=0.0)
    big = start_run(replace(cfg, batch_size=64, grad_accum=1, run_name="64x1"), show_progress=False)
    small = start_run(replace(cfg, batch_size=16, grad_accum=4, run_name="16x4"), show_progress=False)
    steps_big, steps_small = big._steps(), small._steps()
    for _ in range(big.steps_per_epoch + 2):  # across an epoch's end too
        one, four = next(steps_big), next(steps_small)
        assert len(four) >= 4 and all(len(p) <= 16 for p in four)  # 16 x 4: no forward pass above 16 chats
        assert sorted(np.concatenate(one).tolist()) == sorted(np.concatenate(four).tolist())
    big.epoch = big.epoch_step = small.epoch = small.epoch_step = 0
    assert big.fit() == small.fit() == "finished"
    a, b = final_weights(big.run_dir), final_weights(small.run_dir)
    torch.manual_seed(cfg.seed)  # the weights both started from
    start = GuppyLM(big.model.cfg).state_dict()
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    # the key biases have no true gradient (softmax ignores a shift), so Adam scales their rounding
    # noise up to ~1e-6 after 6 steps; every other weight agrees to ~1e-7, and the weights moved 1e-3+
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=k)
    assert moved > 1e-3  # the weights did move: the equality is no accident of standing still
    assert [r["loss"][:6] for r in rows(big.run_dir)] == [r["loss"][:6] for r in rows(small.run_dir)]


def test_divergence_stops_naming_step_and_last_good_checkpoint(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=20, eval_every=4)
    trainer = start_run(cfg, callbacks=[StopAt(6, poison)], show_progress=False)
    assert trainer.fit() == "diverged"
    assert trainer.message.startswith("diverged at step 7: loss nan; ")
    assert trainer.message.endswith("last good checkpoint step-000004")
    meta = json.loads((trainer.run_dir / "run.json").read_text())
    assert meta["status"] == "diverged"
    assert max(list_checkpoints(trainer.run_dir)) == 4  # nothing written after the NaN


def test_run_folder_contents(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=6, eval_every=3, log_every=1)
    trainer = start_run(cfg, show_progress=False)
    trainer.fit()
    run = trainer.run_dir
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and meta["train_config"] == cfg.to_dict()
    assert {"torch", "python", "guppy"} <= set(meta["versions"]) and "git_commit" in meta
    assert (run / "tokenizer.json").exists()
    assert sorted(list_checkpoints(run)) == [3, 6]
    assert not state_path(list_checkpoints(run)[3]).exists() and state_path(list_checkpoints(run)[6]).exists()
    r = rows(run)
    assert [int(x["step"]) for x in r if x["loss"]] == [1, 2, 3, 4, 5, 6]
    evals = [x for x in r if x["eval_loss"]]
    assert [int(x["step"]) for x in evals] == [3, 6] and all(0 <= float(x["persona_pass"]) <= 1 for x in evals)


def test_weight_decay_skips_norms_biases_and_positions(tiny_model):
    opt = build_optimizer(tiny_model, TrainConfig(weight_decay=0.1))
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    assert decayed and all(tiny_model.get_parameter(n).ndim == 2 and "pos" not in n for n in decayed)
    plain = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert any("pos" in n for n in plain) and any(tiny_model.get_parameter(n).ndim == 1 for n in plain)


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, 100, cfg) == pytest.approx(1e-4)


def cli(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "guppy.train.trainer", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=os.environ | {"PYTHONPATH": os.getcwd()})


@pytest.mark.parametrize("args, code, expected", [
    (["--lr", "abc"], 2, "--lr: invalid float value: 'abc'"),
    (["--bogus"], 2, "unrecognized arguments: --bogus"),
    (["--precision", "fp8"], 2, "invalid choice: 'fp8'"),
    (["--lr", "-1"], 1, "lr: bad value -1.0"),
    (["--batch-size", "0"], 1, "batch_size: bad value 0"),
    (["--resume", "runs/nothing-here"], 1, "runs/nothing-here/run.json: no such file"),
    (["--resume", "runs/x", "--batch-size", "8"], 1, "drop --batch-size"),
    (["--preset", "huge"], 2, "invalid choice: 'huge'"),
    (["--persona", "shark"], 1, "no such persona"),
    (["--device", "toaster"], 1, "device: 'toaster' is not a device"),
])
def test_bad_flags_one_line(tmp_path, args, code, expected):
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == code, r.stderr
    assert r.stderr.strip().count("\n") == 0 and expected in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_help_documents_every_field():
    r = cli("--help", cwd=os.getcwd())
    for f in TrainConfig.__dataclass_fields__:
        assert f"--{f.replace('_', '-')}" in r.stdout


def test_ctrl_c_saves_and_resume_finishes(tmp_path, tiny_cli_args):
    args = tiny_cli_args(tmp_path, steps=400)
    proc = subprocess.Popen([sys.executable, "-m", "guppy.train.trainer", *args, "--run-name", "sig", "--quiet"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": os.getcwd()})
    metrics = tmp_path / "runs" / "sig" / "metrics.csv"
    deadline = time.time() + 90
    while not (metrics.exists() and metrics.stat().st_size > 200) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    meta = json.loads((tmp_path / "runs" / "sig" / "run.json").read_text())
    assert meta["status"] == "interrupted" and list_checkpoints(tmp_path / "runs" / "sig")
    r = cli("--resume", "runs/sig", "--quiet", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "runs" / "sig" / "run.json").read_text())["status"] == "finished"
    assert max(list_checkpoints(tmp_path / "runs" / "sig")) == 400



def test_precision_is_chosen_from_the_hardware_and_overridable(monkeypatch):
    cpu = torch.device("cpu")
    assert 0 < train_mod.cpu_bf16_speedup() < 100  # measured: bf16 over fp32 matmul time
    fast = train_mod.cpu_bf16_speedup() >= train_mod.BF16_CPU_MIN_SPEEDUP
    assert pick_precision("auto", cpu) == (torch.bfloat16 if fast else torch.float32)
    # an AMX CPU (bf16 ~6x fp32) autocasts; a Xeon whose AVX512-BF16 runs at 0.5x fp32 does not
    monkeypatch.setattr(train_mod, "cpu_bf16_speedup", lambda: 6.0)
    assert pick_precision("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(train_mod, "cpu_bf16_speedup", lambda: 0.5)
    assert pick_precision("auto", cpu) == torch.float32
    assert pick_precision("fp32", cpu) == torch.float32
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        pick_precision("fp16", cpu)


def test_bf16_training_runs_and_learns(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=30, precision="bf16", eval_prompts=0)
    trainer = start_run(cfg, show_progress=False)
    assert trainer.fit() == "finished" and trainer.dtype == torch.bfloat16
    losses = [float(r["loss"]) for r in rows(trainer.run_dir) if r["loss"]]
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_trains_on_cuda_unchanged(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=10, device="cuda", precision="auto", record=True, record_every=5)
    trainer = start_run(cfg, show_progress=False)
    assert trainer.fit() == "finished" and trainer.device.type == "cuda"
    assert guppy.open_run(trainer.run_dir).model("latest") is not None


def test_a_preset_trains_with_its_recipe_under_the_flags_given():
    from guppy.config import PRESET_RECIPES

    bare = TrainConfig.for_preset(preset="guppy")
    assert {k: getattr(bare, k) for k in PRESET_RECIPES["guppy"]} == PRESET_RECIPES["guppy"]
    assert TrainConfig.for_preset(preset="guppy", lr=1e-3).lr == 1e-3  # a flag given wins
    assert TrainConfig.for_preset(preset="demo") == TrainConfig(preset="demo")  # no recipe: the defaults
    assert TrainConfig(preset="guppy").lr == TrainConfig().lr  # the dataclass itself applies none
    assert "(default: 0.003; --preset guppy: 0.001)" in " ".join(guppy.train.trainer.build_parser().format_help().split())


def test_make_reference_is_the_guppy_preset_on_its_recipe(tmp_path):
    """`make reference`'s guppy-train line (from `make -n`) builds the recipe; the same line, cut
    to 2 steps on a small persona, trains and records."""
    import shlex
    import shutil

    from tests.conftest import MINI

    if not shutil.which("make"):
        pytest.skip("no make on this machine")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dry = subprocess.run(["make", "-n", "reference"], cwd=root, capture_output=True, text=True, check=True).stdout
    line = next(x for x in dry.splitlines() if "guppy-train" in x)
    flags = shlex.split(line)[1:]
    given = {k: v for k, v in vars(guppy.train.trainer.build_parser().parse_args(flags)).items()
             if v is not None and k not in ("resume", "quiet", "dist_backend")}
    cfg = TrainConfig.for_preset(**given)
    assert cfg.preset == "guppy" and cfg.record and cfg.lr == 1e-3 and cfg.loss_on == "all" and cfg.epochs == 1
    flags = [f for f in flags if not f.startswith("--run-name") and "reference-" not in f]
    small = ["--steps", "2", "--n-chats", "600", "--vocab-size", "400", "--persona", str(MINI), "--eval-chats", "8",
             "--eval-prompts", "0", "--runs-dir", str(tmp_path), "--run-name", "ref", "--quiet", "--record-inputs", "3"]
    assert guppy.train.trainer.main(flags + small) == 0
    run = guppy.open_run(tmp_path / "ref")
    assert run.config.lr == 1e-3 and run.model_config.n_layers == 6 and run.model_config.dropout == 0
    assert len(run.snapshots) >= 2


@pytest.mark.parametrize("clip", [0.0, 1e-3, 1.0, 1e6])
def test_clipping_by_the_watchdogs_norms_is_torchs_clipping(clip):
    """The Trainer clips by the per-parameter norms the Watchdog took: the same total and the same
    gradients as torch.nn.utils.clip_grad_norm_, under the clip and over it."""
    from guppy.config import model_preset
    from guppy.health.forensics import StepRing
    from guppy.train.trainer import clip_by_norms

    torch.manual_seed(0)
    ours, theirs = (GuppyLM(model_preset("tiny")) for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randint(0, 500, (4, 16))
    for m in (ours, theirs):
        m(x).logsumexp(-1).mean().backward()
    ring = StepRing(list(ours.named_parameters()))
    total = clip_by_norms(list(ours.parameters()), ring.record_grads(1), clip)
    expected = float(torch.nn.utils.clip_grad_norm_(theirs.parameters(), clip if clip > 0 else float("inf")))
    assert total == pytest.approx(expected, rel=1e-5) and total > 1e-3
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8)
    if 0 < clip < expected:  # clipped: the total is now the clip
        assert float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ours.parameters()]))) == \
            pytest.approx(clip, rel=1e-4)
