"""Recording: what a snapshot holds is right, complete files only, readable while training."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch

import guppy
from guppy.record import head_scores as M
from guppy.record.recorder import snapshot_schedule
from guppy.run.reader import RunError


def test_schedule_is_log_spaced_early_then_linear():
    s = snapshot_schedule(1000)
    assert s == {0, 1, 2, 4, 8, 16, 32, 64, *range(100, 1001, 100)}
    assert snapshot_schedule(1000, every=100, log_spaced=False) == {0, *range(100, 1001, 100)}


def test_snapshots_of_a_recorded_run(tiny_recorded_run):
    run = guppy.open_run(tiny_recorded_run)
    steps = list(run.snapshots["step"])
    total = run.config.steps
    assert steps[0] == 0 and steps[-1] == total and {1, 2, 4, 8} <= set(steps)
    assert list(run.snapshots["tokens"]) == sorted(run.snapshots["tokens"])
    cfg = run.model_config
    pattern = run.acts("blocks.0.attn.hook_pattern", snapshot="latest")
    K = len(run.watch_subset)
    assert pattern.shape[:2] == (K, cfg.n_heads) and pattern.dtype == np.float16
    lengths = run.watch.lengths[run.watch_subset]
    for k, n in enumerate(lengths):  # rows of real queries sum to 1, nothing attends ahead
        p = pattern[k, :, :n, :n].astype(np.float32)
        np.testing.assert_allclose(p.sum(-1), 1, atol=3e-3)
        assert np.abs(np.triu(p, 1)).max() == 0
    resid = run.acts("blocks.*.hook_resid_pre", snapshot=4)
    assert sorted(resid) == [f"blocks.{i}.hook_resid_pre" for i in range(cfg.n_layers)]
    assert run.acts("blocks.0.hook_resid_pre", snapshot="all").shape[0] == len(steps)
    hm = run.head_metrics()
    assert set(hm["metric"]) >= {"entropy", "prev_token", "induction", "first_token"}
    assert len(hm) == len(steps) * cfg.n_layers * cfg.n_heads * hm["metric"].nunique()
    replies = run.read("samples/replies")
    assert len(replies) >= 1 and all(isinstance(r, str) for r in replies)
    ratio = run.read("params/update_ratio", snapshot=total)
    assert np.isfinite(ratio).all() and (ratio > 0).all()
    assert np.isfinite(run.read("grads/param_norm", snapshot=total)).all()


def test_recorded_metrics_match_a_fresh_computation(tiny_recorded_run):
    """Recompute from the snapshot's own weights through the cache: an independent path."""
    run = guppy.open_run(tiny_recorded_run)
    step = int(run.snapshots["step"].iloc[len(run.snapshots) // 2])
    model = run.model(step)
    tokens = torch.from_numpy(run.watch_tokens)
    lengths = torch.from_numpy(run.watch.lengths)
    period = torch.from_numpy(run.watch.period)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names="blocks.*.attn.hook_pattern")
    for layer in range(run.model_config.n_layers):
        fresh = M.head_metrics(cache[f"blocks.{layer}.attn.hook_pattern"], lengths, period)
        for metric in ("entropy", "prev_token", "induction", "first_token"):
            np.testing.assert_allclose(run.read(f"heads/{metric}", step)[layer], fresh[metric].numpy(), atol=1e-5)
    # the stored pattern subset is the same tensor, trimmed and in float16
    stored = run.acts("blocks.1.attn.hook_pattern", snapshot=step)
    sub = cache["blocks.1.attn.hook_pattern"][run.watch_subset][:, :, :stored.shape[2], :stored.shape[3]]
    np.testing.assert_allclose(stored.astype(np.float32), sub.numpy(), atol=1e-3)
    # the mean reply loss of the probe chats
    losses = M.token_losses(logits, tokens)
    pos = torch.arange(1, tokens.shape[1])
    start = torch.from_numpy(run.watch.reply_start)[:, None]
    mask = (pos >= start) & (pos < lengths[:, None])
    assert float(run.read("loss/mean", step)) == pytest.approx(float(losses[mask].mean()), abs=1e-4)
    # parameter norms of the saved weights
    norms = [float(p.detach().norm()) for p in model.parameters()]
    np.testing.assert_allclose(run.read("params/norm", step), norms, rtol=1e-5)


def test_induction_score_finds_a_copying_pattern():
    """A hand-made induction pattern scores 1, a previous-token pattern 0 (and 1 on its own score)."""
    n, T = 5, 11  # start token + 2 copies of 5
    ind = torch.zeros(1, 1, T, T)
    prev = torch.zeros(1, 1, T, T)
    ind[0, 0, 0, 0] = prev[0, 0, 0, 0] = 1
    for q in range(1, T):
        prev[0, 0, q, q - 1] = 1
        ind[0, 0, q, q - n + 1 if q >= n + 1 else 0] = 1
    lengths, period = torch.tensor([T]), torch.tensor([n])
    assert M.induction_score(ind, lengths, period).item() == pytest.approx(1.0)
    assert M.induction_score(prev, lengths, period).item() == pytest.approx(0.0)
    assert M.prev_token_score(prev, lengths).item() == pytest.approx(1.0)
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    ent = M.attention_entropy(uniform[None, None], lengths).item()
    assert ent == pytest.approx(float(np.mean(np.log(np.arange(1, T + 1)))), rel=1e-5)


def test_run_api_errors_name_the_file(tiny_recorded_run, tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        guppy.open_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(RunError, match=r"half/run.json: no such file"):
        guppy.open_run(tmp_path / "half")
    run = guppy.open_run(tiny_recorded_run)
    with pytest.raises(RunError, match="no snapshot 99999"):
        run.acts("blocks.0.attn.hook_pattern", snapshot=99999)
    with pytest.raises(RunError, match="no stored hook matches 'blocks.0.mlp.hook_nope'"):
        run.acts("blocks.0.mlp.hook_nope")


def test_corrupt_and_old_snapshots_give_clear_errors(tiny_recorded_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_recorded_run, copy)
    run = guppy.open_run(copy)
    last = max(run.snapshot_files)
    run.snapshot_files[last].write_bytes(b"\x89HDF\r\n garbage")
    with pytest.raises(RunError, match=rf"step-{last:06d}.h5: not a readable HDF5 snapshot"):
        run.acts("blocks.0.attn.hook_pattern")
    first = min(run.snapshot_files)
    with h5py.File(run.snapshot_files[first], "a") as f:
        f.attrs["schema_version"] = 0
    with pytest.raises(RunError, match="snapshot schema_version 0, this guppy reads 1, 2"):
        run.read("heads/entropy", first)


SLOW_WRITER = textwrap.dedent("""
    import sys, time, h5py
    import guppy.record.recorder as R
    real = h5py.File.create_dataset
    def slow(self, *a, **k):
        time.sleep(0.05)  # make every snapshot take long enough to be killed in the middle
        return real(self, *a, **k)
    h5py.Group.create_dataset = slow
    from guppy.train.trainer import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_mid_snapshot_loses_nothing_complete(tmp_path, tiny_cli_args):
    args = tiny_cli_args(tmp_path, steps=200) + ["--record", "--run-name", "killed", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=os.environ | {"PYTHONPATH": os.getcwd()})
    snaps = tmp_path / "runs" / "killed" / "snapshots"
    deadline = time.time() + 120
    killed_mid = False
    while time.time() < deadline and proc.poll() is None:
        done = list(snaps.glob("step-*.h5")) if snaps.exists() else []
        writing = list(snaps.glob(".step-*.tmp")) if snaps.exists() else []
        if len(done) >= 3 and writing:
            proc.send_signal(signal.SIGKILL)
            killed_mid = True
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert killed_mid, proc.stderr.read()[-2000:]
    run = guppy.open_run(tmp_path / "runs" / "killed")
    assert len(run.snapshot_files) >= 3
    for step in run.snapshot_files:  # every snapshot listed is whole and readable
        assert run.acts("blocks.*.attn.hook_pattern", snapshot=step)
        assert run.read("heads/entropy", step).shape == (run.model_config.n_layers, run.model_config.n_heads)
        run.model(step)
    assert len(run.head_metrics()) > 0


def test_reader_follows_a_live_run(tmp_path, tiny_cli_args):
    args = tiny_cli_args(tmp_path, steps=120) + ["--record", "--record-every", "10", "--run-name", "live", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "guppy.train.trainer", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=os.environ | {"PYTHONPATH": os.getcwd()})
    seen = set()
    try:
        deadline = time.time() + 180
        while proc.poll() is None and time.time() < deadline:
            try:
                run = guppy.open_run(tmp_path / "runs" / "live")
            except RunError:  # not created yet
                time.sleep(0.1)
                continue
            steps = set(run.snapshots["step"])
            for s in steps - seen:
                run.acts("blocks.0.attn.hook_pattern", snapshot=s)
            seen |= steps
            run.metrics  # noqa: B018 - reading the growing table must work too
            time.sleep(0.05)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    final = set(guppy.open_run(tmp_path / "runs" / "live").snapshots["step"])
    assert len(seen) >= 3 and seen <= final and max(final) == 120
