"""guppy-timeline: births dated where they were planted, stages where a trajectory turns, the cache,
the LLC through devinterp, the command's errors, and the Timeline view on a run never measured."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import guppy
from guppy.analysis import timeline as T
from guppy.run import format as R

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_copy(tiny_recorded_run, tmp_path) -> Path:
    dst = tmp_path / "runs" / "recorded"
    shutil.copytree(tiny_recorded_run, dst)
    for name in (R.TIMELINE_FILE, R.TIMELINE_SERIES_FILE, R.TIMELINE_KEY_FILE, R.LLC_FILE):
        (dst / name).unlink(missing_ok=True)
    return dst


def test_rise_is_dated_half_way_up_and_a_fall_with_down():
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192])
    values = 0.05 + 0.6 / (1 + np.exp(-(steps - 60) / 6))  # half way up at step 60: the first snapshot after it
    r = T.rise(steps, values)
    assert r["step"] == 64 and r["rise_from"] <= 64 <= r["rise_to"]
    assert r["before"] == pytest.approx(0.05, abs=0.01) and r["peak"] == pytest.approx(0.65, abs=0.01)
    f = T.rise(steps, 3 - values, down=True)
    assert f["step"] == 64 and f["before"] > f["peak"]
    assert T.rise(steps, np.full(len(steps), 0.3)) is None  # nothing rose


def test_change_points_find_the_turns_of_a_trajectory():
    rng = np.random.default_rng(0)
    t = np.arange(18, dtype=float)
    x = np.where(t < 6, t, np.where(t < 12, 6 + 0.1 * (t - 6), 6.6 - 2 * (t - 12)))
    y = np.where(t < 6, 0.2 * t, np.where(t < 12, 1.2 + 3 * (t - 6), 19.2 + 0.1 * (t - 12)))
    X = np.stack([x, y], 1) + rng.normal(0, 0.02, (18, 2))
    cuts = T.change_points(X, max_bkps=5)
    assert len(cuts) == 2 and abs(cuts[0] - 6) <= 1 and abs(cuts[1] - 12) <= 1
    assert T.change_points(np.stack([t, 2 * t], 1), max_bkps=5) == []  # a straight line has no stage


def plant_rise(run_dir: Path, layer: int, head: int, at: int) -> int:
    """Give one head a previous-token score that rises over three snapshots centred on index `at`;
    -> the step of that snapshot."""
    files = R.list_snapshots(run_dir)
    for i, (step, path) in enumerate(files.items()):
        with h5py.File(path, "r+") as f:
            scores = f[R.head_key("prev_token")][()]
            scores[:] = np.minimum(scores, 0.1)  # no other head of the tiny model counts
            scores[layer, head] = 0.02 if i < at - 1 else 0.2 if i == at - 1 else 0.4 if i == at else 0.6 if i == at + 1 else 0.7
            f[R.head_key("prev_token")][...] = scores
    return list(files)[at]


def test_a_planted_rise_is_dated_within_one_snapshot(run_copy):
    steps = list(R.list_snapshots(run_copy))
    at = len(steps) // 2
    planted = plant_rise(run_copy, 1, 0, at)
    frame = T.timeline(guppy.open_run(run_copy), T.TimelineSettings(quick=True))
    assert list(frame.columns) == list(R.TIMELINE_COLUMNS)
    born = frame[(frame.kind == "birth") & (frame.what == "L1H0 becomes a previous-token head")]
    assert len(born) == 1
    got = steps.index(int(born.step.iloc[0]))
    assert abs(got - steps.index(planted)) <= 1
    assert "previous-token score 0.02 -> 0.70" in born.evidence.iloc[0]
    assert not ((frame.kind == "birth") & frame.what.str.contains("L0H0 becomes a previous")).any()


def test_the_timeline_is_cached_and_recomputed_when_a_snapshot_changes(run_copy):
    run = guppy.open_run(run_copy)
    assert run.timeline(compute=False) is None  # never computed: absent, not an error
    first = run.timeline(quick=True)
    assert (run_copy / R.TIMELINE_FILE).exists() and run.timeline_series() is not None
    assert run.timeline(compute=False, quick=True).equals(first)
    assert run.timeline(compute=False, quick=False) is None  # a quick one does not stand in for the full one
    plant_rise(run_copy, 1, 1, 3)
    assert run.timeline(compute=False, quick=True) is None  # the snapshot changed: stale
    again = guppy.open_run(run_copy).timeline(quick=True)
    assert again.what.str.contains("L1H1 becomes a previous-token head").any()


def test_full_timeline_has_stages_births_and_words(run_copy):
    run = guppy.open_run(run_copy)
    frame = run.timeline()
    series = run.timeline_series()
    assert {"ed.pc1", "heldout_loss", "ablate.L0H0", "ablate.MLP0"} <= set(series.columns)
    assert any(c.startswith("probe.") for c in series.columns)
    assert set(frame.kind) <= set(R.TIMELINE_KINDS) and (frame.kind == "stage").sum() >= 1
    stages = frame[frame.kind == "stage"]
    assert stages.step.iloc[0] == 0 and (stages.value.to_numpy()[:-1] == stages.step.to_numpy()[1:]).all()
    lines = T.plain_words(frame)
    assert len(lines) == len(frame) and all(line.startswith("step ") for line in lines)
    assert all(e for e in frame.evidence)


def test_eval_runs_at_every_snapshot(tiny_recorded_run):
    run = guppy.open_run(tiny_recorded_run)
    held = run.metrics[["step", "eval_loss"]].dropna()
    assert set(run.snapshot_files) <= set(held.step)


def test_llc_through_devinterp_is_finite_and_leaves_the_weights(tiny_recorded_run):
    pytest.importorskip("devinterp")
    import torch

    from guppy.analysis.heldout import heldout_batch
    from guppy.analysis.llc import LLCSettings, estimate_llc

    run = guppy.open_run(tiny_recorded_run)
    model = run.model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = estimate_llc(model, heldout_batch(run, 16), LLCSettings(num_chains=1, num_draws=4, batch_size=8, chats=16))
    assert np.isfinite(out["llc"]) and out["init_loss"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_llc_loss_runs_only_to_the_batch_longest_chat_with_the_same_losses(tiny_recorded_run):
    """devinterp pads every batch to the longest held-out chat; the loss cuts it to the batch's own
    longest and must give what the whole padded forward gives."""
    import torch

    from guppy.analysis.heldout import heldout_batch
    from guppy.analysis.llc import _loss_fn
    from guppy.record.head_scores import mean_loss_per_row

    run = guppy.open_run(tiny_recorded_run)
    model, batch = run.model(), heldout_batch(run, 16)
    short = batch.tokens[batch.lengths.argsort()[:8]]  # the shortest chats, padded to the longest of all 16
    assert int((short != batch.pad_id).sum(1).max()) < short.shape[1]  # the cut has something to cut
    with torch.no_grad():
        cut = _loss_fn(batch.pad_id)(model, short)
        whole = mean_loss_per_row(model(short), short, short[:, 1:] != batch.pad_id)
    assert cut.shape == (8, short.shape[1] - 1)
    torch.testing.assert_close(cut[:, 0], whole, rtol=1e-5, atol=1e-6)


def timeline_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "guppy.analysis.timeline_cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_prints_events_and_reads_its_cache(run_copy):
    r = timeline_cli(run_copy, "--quick")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("step 0: stage 1 of") and "events in" in r.stderr
    mtime = (run_copy / R.TIMELINE_FILE).stat().st_mtime_ns
    again = timeline_cli(run_copy, "--quick", "--csv")
    assert again.returncode == 0 and (run_copy / R.TIMELINE_FILE).stat().st_mtime_ns == mtime
    assert list(pd.read_csv(pd.io.common.StringIO(again.stdout)).columns) == list(R.TIMELINE_COLUMNS)


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "no such run"),
    (["{run}", "--llc-lr", "-1"], "--llc-lr must be > 0"),
    (["{run}", "--max-stages", "0"], "expected a positive integer"),
])
def test_cli_refuses_bad_input_in_one_line_and_writes_nothing(run_copy, tmp_path, args, message):
    args = [a.format(missing=tmp_path / "nope", run=run_copy) for a in args]
    r = timeline_cli(*args)
    assert r.returncode != 0 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr.lower()
    assert not (run_copy / R.TIMELINE_FILE).exists()


def test_timeline_view_renders_on_a_run_never_measured(run_copy, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", ["app.py", "--runs-dir", str(run_copy.parent)])
    at = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=120)
    at.query_params["run"], at.query_params["view"] = "recorded", "Timeline"
    at.run()
    assert not at.exception, at.exception
    assert any("quick timeline" in c.value for c in at.caption)
    assert any(s.value == "What happened, in order" for s in at.subheader)
    go = [b for b in at.button if b.label.startswith("→")]
    assert go
    go[0].click().run()
    assert not at.exception
    assert at.sidebar.radio[0].value != "Timeline"  # the event's view opened


DOCS = ROOT / "docs" / "timeline.md"


def docs_commands() -> list[str]:
    import re

    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), re.S)
    return [line.split("  #")[0].strip() for b in blocks for line in b.splitlines()
            if line.strip() and not line.startswith("#") and not line.startswith("make ")]


@pytest.mark.slow
def test_the_docs_commands_run_on_a_tiny_run(run_copy, tmp_path):
    """Every command of docs/timeline.md (but `make demo-induction`, run by CI's README check), on the tiny run."""
    import re
    import shlex

    commands = docs_commands()
    assert any(c.startswith("guppy-timeline") for c in commands)
    assert any("timeline_figures.py" in c for c in commands) and any("bench_timeline.py" in c for c in commands)
    for cmd in commands:
        args = [re.sub(r"^runs/(demo|reference|induction)-[\w-]+$", str(run_copy), a) for a in shlex.split(cmd)]
        args = [str(tmp_path / "figures") if a == "docs/timeline" else a for a in args]
        if args[0] == "guppy-timeline":
            args = [sys.executable, "-m", "guppy.analysis.timeline_cli", *args[1:], *(
                ["--llc-draws", "3", "--llc-chains", "1", "--llc-chats", "16"] if "--llc" in args else [])]
        else:
            args = [sys.executable, *args[1:]]
        out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert out.returncode == 0, (cmd, out.stderr[-2000:])
        if "timeline_figures" in cmd:
            assert all(p.stat().st_size > 10_000 for p in (tmp_path / "figures").glob("*.png"))
        if "bench_timeline" in cmd:
            assert "full timeline (no LLC)" in out.stdout
