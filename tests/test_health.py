"""Health signals and divergence forensics: an injected fault is named first, a spike is
snapshotted while training goes on, health rows cover every layer, a diverged run resumes with
a new learning rate, and a kill while forensics are written leaves no half file."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import guppy
from guppy.health.files import forensic_steps, read_forensics, write_forensics
from guppy.health.forensics import SpikeDetector, StepRing, replay
from guppy.health.signals import ForwardSignals
from guppy.health.watchdog import InjectFault
from guppy.run.format import FORENSICS_DIR, LAYER_SIGNALS
from guppy.run.reader import RunError
from guppy.train.trainer import start_run
from tests.conftest import tiny_train_config


def meta(run_dir) -> dict:
    return json.loads((run_dir / "run.json").read_text())


# ---- the signals against independent computations --------------------------------------------


def test_forward_signals_match_the_attention_scores_and_residual(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (3, 20))
    signals = ForwardSignals(tiny_model)
    signals.start()
    tiny_model.eval()(torch.randint(0, tiny_model.cfg.d_vocab, (8, 60)))  # an evaluation in between: not counted
    tiny_model.train()  # the tiny preset has no dropout: the same numbers as eval mode
    _, cache = tiny_model.run_with_cache(tokens, names=lambda n: n.endswith(("hook_attn_scores", "hook_resid_post")))
    signals.stop()
    for l in range(tiny_model.cfg.n_layers):
        scores = cache[f"blocks.{l}.attn.hook_attn_scores"]  # (B, H, T, T), -inf above the diagonal
        want = scores[torch.isfinite(scores)].abs().max()
        assert signals.last[f"blocks.{l}.attn_logit_max"] == pytest.approx(float(want), rel=1e-5)
        resid = cache[f"blocks.{l}.hook_resid_post"]
        assert signals.last[f"blocks.{l}.resid_rms"] == pytest.approx(float(resid.pow(2).mean().sqrt()), rel=1e-5)
    assert not any(h.fwd for h in tiny_model.hook_dict.values())  # stop() removed its hooks


def test_step_ring_update_ratio_is_the_weight_change(tiny_model):
    ring = StepRing(list(tiny_model.named_parameters()), size=3)
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in tiny_model.parameters()]
    for step in range(1, 5):  # more steps than the ring holds: the oldest is dropped
        tiny_model(torch.randint(0, 50, (2, 8))).logsumexp(-1).mean().backward()
        ring.record_grads(step)
        before = [p.detach().clone() for p in tiny_model.parameters()]
        grads = [p.grad.norm() for p in tiny_model.parameters()]
        opt.step()
        opt.zero_grad()
        ring.record_update()
    rows = [r for r in ring.table() if r["step"] == 4]
    assert sorted({r["step"] for r in ring.table()}) == [2, 3, 4]
    for r, p, b, g in zip(rows, tiny_model.parameters(), before, grads):
        assert r["grad_norm"] == pytest.approx(float(g), rel=1e-5)
        assert r["update_ratio"] == pytest.approx(float((p.detach() - b).norm() / b.norm()), rel=1e-4)


def test_health_table_has_every_layer(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=10, log_every=5, eval_prompts=0)
    trainer = start_run(cfg, show_progress=False)
    assert trainer.fit() == "finished"
    health = guppy.open_run(trainer.run_dir).health
    assert list(health.step) == [5, 10]
    L = trainer.model.cfg.n_layers
    for name in LAYER_SIGNALS:
        for l in range(L):
            col = health[f"blocks.{l}.{name}"]
            assert (col > 0).all() and col.map(math.isfinite).all(), (name, l)
    metrics = guppy.open_run(trainer.run_dir).metrics
    assert health.loss.iloc[-1] == pytest.approx(float(metrics.loss.dropna().iloc[-1]), rel=0.5)  # step vs window mean
    assert health.loss_scale.isna().all()  # fp32: no loss scale


# ---- divergence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["blocks.1.attn.hook_attn_scores", "blocks.0.mlp.hook_post"])
def test_injected_fault_is_named_first(tmp_path, hook):
    cfg = tiny_train_config(tmp_path, steps=12, eval_every=4, eval_prompts=0)
    trainer = start_run(cfg, callbacks=[InjectFault(hook, step=7)], show_progress=False)
    assert trainer.fit() == "diverged"
    run = guppy.open_run(trainer.run_dir)
    f = run.forensics()
    assert f.step == 7 and f.first_bad == hook
    assert trainer.message.startswith(f"diverged at step 7: loss nan; first non-finite: {hook} (")
    assert f"forensics in {trainer.run_dir / FORENSICS_DIR / 'step-000007'}/" in trainer.message
    assert trainer.message.endswith("last good checkpoint step-000004")
    # every hook point the forward reached before it is finite; it is the one marked
    order = list(f.hooks.hook)
    assert order == [n for n in trainer.model.hook_names if n in order]  # forward order
    before = f.hooks[f.hooks.order < order.index(hook)]
    assert len(before) > 3 and (before.nonfinite == 0).all()
    assert f.hooks.loc[f.hooks.first_bad, "hook"].tolist() == [hook]
    # the same facts in run.json; the broken batch as ids and text; the last steps' norms
    facts = meta(trainer.run_dir)["divergence"]
    assert facts["first_bad_hook"] == hook and facts["message"] == trainer.message and facts["step"] == 7
    assert meta(trainer.run_dir)["status"] == "diverged"
    assert len(f.batch) == cfg.batch_size and f.batch.text.str.len().min() > 0
    ids = [int(t) for t in f.batch.tokens[0].split()]
    assert trainer.data.tokenizer.decode(ids) == f.batch.text[0] and len(ids) == f.batch.length[0]
    assert sorted(set(f.params.step)) == list(range(1, 7)) and set(f.params.param) == set(  # the loss broke first
        n for n, _ in trainer.model.named_parameters())
    assert f.weights.exists() and len(f.replay_params) == len(list(trainer.model.parameters()))


def test_resume_with_a_new_lr_after_divergence(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=14, eval_every=4, eval_prompts=0)
    broken = start_run(cfg, callbacks=[InjectFault("blocks.0.hook_resid_mid", step=10)], show_progress=False)
    assert broken.fit() == "diverged"
    run_dir = broken.run_dir
    # from the command line: a changed --lr is refused for a run that did not diverge ...
    r = subprocess.run([sys.executable, "-m", "guppy.train.trainer", "--resume", str(run_dir), "--batch-size", "4"],
                       capture_output=True, text=True, env=os.environ | {"PYTHONPATH": os.getcwd()}, timeout=120)
    assert r.returncode == 1 and "drop --batch-size" in r.stderr and r.stderr.count("\n") == 1
    # ... and taken for a diverged one: from the last good checkpoint, with the change kept
    again = start_run(cfg, resume_dir=run_dir, resume_changes={"lr": 1e-3, "grad_clip": 0.5}, show_progress=False)
    assert again.step == 8 and again.cfg.lr == 1e-3
    assert again.fit() == "finished" and again.step == 14
    m = meta(run_dir)
    assert m["status"] == "finished" and m["train_config"]["lr"] == 1e-3 and m["divergence"] is None
    (entry,) = m["history"]
    assert entry["resumed_from_step"] == 8 and entry["changes"] == {"lr": [3e-3, 1e-3], "grad_clip": [1.0, 0.5]}
    assert entry["after"]["step"] == 10 and entry["after"]["first_bad_hook"] == "blocks.0.hook_resid_mid"
    health = guppy.open_run(run_dir).health
    assert list(health.step) == sorted(set(health.step)) and health.step.max() == 14  # no row twice
    assert guppy.open_run(run_dir).forensics().step == 10  # the account of the break stays


def test_resume_lr_is_refused_for_a_finished_run(tiny_run):
    r = subprocess.run([sys.executable, "-m", "guppy.train.trainer", "--resume", str(tiny_run), "--lr", "1e-4"],
                       capture_output=True, text=True, env=os.environ | {"PYTHONPATH": os.getcwd()}, timeout=120)
    assert r.returncode == 1 and "the run is finished; only a diverged run resumes with --lr" in r.stderr
    assert r.stderr.count("\n") == 1 and "history" not in meta(tiny_run)


# ---- spikes -------------------------------------------------------------------------------------


def test_spike_detector_judges_against_the_recent_median():
    d = SpikeDetector(3.0, window=4, min_history=3)
    assert [d.observe(x) for x in (50.0, 2.0, 1.0)] == [None, None, None]  # too little history yet
    assert d.observe(10.0) == 2.0  # median of 50, 2, 1 is 2: 10 > 3 x 2
    assert d.observe(5.0) is None  # median of 50, 2, 1, 10 is 6
    assert d.observe(1.0) is None and d.observe(1.0) is None
    assert d.observe(6.0) is None and d.observe(100.0) == 3.0  # the window holds 5, 1, 1, 6: median 3
    off = SpikeDetector(0.0, min_history=0)
    assert all(off.observe(x) is None for x in (1.0, 1e9))


def test_spike_is_snapshotted_and_training_goes_on(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=24, eval_prompts=0, record=True, record_every=24,
                            record_log_spaced=False, record_inputs=4, spike_factor=3.0)
    # final-norm output x40: the logits of one step are 40x too sharp, the loss jumps
    trainer = start_run(cfg, callbacks=[InjectFault("ln_final.hook_normalized", step=18, scale=40.0)],
                        show_progress=False)
    assert trainer.fit() == "finished" and trainer.step == 24
    spikes = meta(trainer.run_dir)["spikes"]
    assert [s["step"] for s in spikes] == [18] and spikes[0]["factor"] > 3
    assert spikes[0]["snapshot"] == "step-000018.h5"
    run = guppy.open_run(trainer.run_dir)
    assert list(run.snapshots.step) == [0, 18, 24]
    assert math.isfinite(float(run.read("loss/mean", 18)))


def test_spike_factor_zero_is_off(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=20, eval_prompts=0, spike_factor=0.0)
    trainer = start_run(cfg, callbacks=[InjectFault("ln_final.hook_normalized", step=15, scale=40.0)],
                        show_progress=False)
    assert trainer.fit() == "finished" and "spikes" not in meta(trainer.run_dir)


# ---- forensics are whole or absent ----------------------------------------------------------------

KILLED_WRITER = """
import sys, time
from pathlib import Path
import guppy.health.files as hf
from guppy.train.trainer import start_run
from guppy.health.watchdog import InjectFault
from tests.conftest import tiny_train_config

slow = hf.atomic_write
def atomic_write(path, write):  # each forensic file takes a while: the test kills in between
    slow(path, write)
    print("wrote", path.name, flush=True)
    time.sleep(30)
hf.atomic_write = atomic_write
cfg = tiny_train_config(Path(sys.argv[1]), steps=10, eval_every=4, eval_prompts=0, run_name="killed")
start_run(cfg, callbacks=[InjectFault("blocks.0.attn.hook_attn_scores", step=6)], show_progress=False).fit()
"""


def test_kill_while_forensics_are_written_leaves_no_half_file(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": os.getcwd()})
    try:
        line = proc.stdout.readline()  # the first forensic file is in the hidden folder
        assert line.startswith("wrote"), proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    run_dir = tmp_path / "runs" / "killed"
    folder = run_dir / FORENSICS_DIR
    assert [p.name for p in folder.iterdir()] == [".step-000006.tmp"]  # hidden, unfinished
    assert forensic_steps(run_dir) == []
    with pytest.raises(RunError, match="no forensics"):
        guppy.open_run(run_dir).forensics()
    # the next account written there replaces the leftover and appears whole
    write_forensics(run_dir, 6, {"summary.json": {"step": 6}, "hooks.csv": [{"order": 0}], "params.csv": [],
                                 "replay_params.csv": [], "batch.csv": [{"chat": 0}]})
    assert [p.name for p in folder.iterdir()] == ["step-000006"]
    assert read_forensics(run_dir).summary == {"step": 6}


def test_replay_reports_every_hook_point_in_forward_order(tiny_model):
    x = torch.randint(0, 100, (2, 12))
    rows, grads, loss, param_grads = replay(tiny_model, x, x, torch.ones_like(x, dtype=torch.bool))
    assert [r["hook"] for r in rows] == [n for n in tiny_model.hook_names]  # hook_result too: it was hooked
    assert all(r["nonfinite"] == 0 and r["max_abs"] > 0 for r in rows) and math.isfinite(loss)
    assert list(grads)[0] in ("hook_logits",) and set(param_grads) == {n for n, _ in tiny_model.named_parameters()}
    assert all(p.grad is None for p in tiny_model.parameters())  # the replay leaves no gradients behind


# ---- the dashboard's Health view ------------------------------------------------------------------


@pytest.fixture(scope="module")
def health_runs(tmp_path_factory, tiny_run):
    import shutil

    root = tmp_path_factory.mktemp("health_runs")
    cfg = tiny_train_config(root.parent, steps=12, eval_every=4, eval_prompts=0, log_every=2, runs_dir=str(root),
                            run_name="broken")
    assert start_run(cfg, callbacks=[InjectFault("blocks.1.mlp.hook_pre", step=9)], show_progress=False).fit() == "diverged"
    shutil.copytree(tiny_run, root / "healthy")
    shutil.copytree(tiny_run, root / "old")
    (root / "old" / "health.csv").unlink()
    # a run still training: status running, its newest health row half-written
    shutil.copytree(tiny_run, root / "live")
    meta = json.loads((root / "live" / "run.json").read_text())
    (root / "live" / "run.json").write_text(json.dumps(meta | {"status": "running"}))
    with open(root / "live" / "health.csv", "a") as f:
        f.write("65,4.1,0.9,,0.5")
    return root


def health_page(root, monkeypatch, run):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("GUPPY_RUNS_DIR", str(root))
    at = AppTest.from_file(os.path.join(os.getcwd(), "dashboards", "app.py"), default_timeout=120)
    at.query_params["run"], at.query_params["view"] = run, "Health"
    at = at.run()
    assert not at.exception, at.exception
    return at


def test_health_view_marks_the_divergence_and_highlights_the_first_bad_hook(health_runs, monkeypatch):
    at = health_page(health_runs, monkeypatch, "broken")
    assert "first non-finite: blocks.1.mlp.hook_pre" in at.error[0].value
    (fig,) = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    layers = {t["name"] for t in fig["data"] if t["name"].startswith("layer")}
    assert layers == {"layer 0", "layer 1"}
    marks = [s for s in fig["layout"]["shapes"]]
    assert any(s.get("fillcolor") == "red" for s in marks) and any(s.get("x0") == 9 for s in marks)
    assert [m.value for m in at.metric][0] == "blocks.1.mlp.hook_pre"
    hooks, params, batch = at.dataframe
    assert "blocks.1.mlp.hook_pre" in hooks.value.index and len(batch.value) == 16
    styles = hooks.proto.arrow_data.styler.styles  # CSS rules by row: only the first bad hook's row is styled
    row = list(hooks.value.index).index("blocks.1.mlp.hook_pre")
    assert BAD_STYLE in styles and f"_row{row}_col0" in styles and styles.count("_col0") == 1


BAD_STYLE = "background-color: #ffd0d0"


@pytest.mark.parametrize("run, note", [("healthy", None), ("live", None), ("old", "No health rows yet")])
def test_health_view_of_a_healthy_a_live_and_an_old_run(health_runs, monkeypatch, run, note):
    at = health_page(health_runs, monkeypatch, run)
    assert not at.error
    if note:
        assert note in at.info[0].value and not at.get("plotly_chart")
    else:
        (fig,) = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
        assert len(fig["data"]) == 1 + 4 * 2  # the loss, then 4 signals x 2 layers
        steps = guppy.open_run(health_runs / run).health.step
        assert list(steps) == list(range(5, 61, 5))  # every 5th step of 60; the torn row left out


def test_readme_figure_is_drawn_from_a_diverged_run(health_runs, tmp_path):
    out = tmp_path / "fig.png"
    r = subprocess.run([sys.executable, "experiments/health_figure.py", "--run", str(health_runs / "broken"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
