"""The induction demo's parts on a tiny run with memory chats: the dense recall/induction callback
(checked against the recorder's own numbers), the recall ablation probe, the figures, the dashboard view."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_train_config

import guppy
from guppy.analysis.memory_recall import (
    RecallMonitor,
    dense_head_scores,
    random_items,
    read_recall,
    recall_batch,
    repeated_batch,
    repeated_tokens,
)
from guppy.run.format import ICL_DROP, ICL_FIRST, ICL_SECOND
from guppy.run.reader import load_eval_data
from guppy.train.trainer import start_run

ICL_COLUMNS = (ICL_FIRST, ICL_SECOND, ICL_DROP)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def memory_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("memory_run")
    cfg = tiny_train_config(tmp, preset="induction", memory_fraction=0.5, steps=30, record=True, record_every=10,
                            record_inputs=6, eval_prompts=0, run_name="memory")
    trainer = start_run(cfg, callbacks=[RecallMonitor(every=5, n_chats=32)], show_progress=False)
    assert trainer.fit() == "finished"
    return trainer.run_dir


def test_monitor_writes_a_row_every_few_steps(memory_run):
    table = read_recall(memory_run)
    assert table.step.tolist() == [0, 5, 10, 15, 20, 25, 30]
    heads = [f"{m}.L{l}H{h}" for m in ("induction", "prev_token", "chat_induction", "chat_random_induction")
             for l in range(2) for h in range(4)]
    assert set(heads) <= set(table.columns)
    values = table[heads + ["recall_acc", "recall_token_acc", "random_recall_acc", "random_recall_token_acc"]].to_numpy()
    assert ((values >= 0) & (values <= 1)).all()
    assert table.recall_loss.iloc[-1] < table.recall_loss.iloc[0]  # it learns something, even in 30 steps
    icl = table[list(ICL_COLUMNS)].to_numpy()  # the in-context loss on the repeated random tokens, every row
    assert np.isfinite(icl).all() and (icl[:, :2] > 0).all()
    np.testing.assert_allclose(icl[:, 2], icl[:, 0] - icl[:, 1], atol=2e-3)


def test_random_items_swap_every_copy_of_the_item_and_nothing_else(memory_run):
    run = guppy.open_run(memory_run)
    _, chats = load_eval_data(memory_run)
    batch = recall_batch(run.tokenizer, chats[:64], run.model_config.n_ctx)
    swapped = random_items(batch, run.tokenizer.vocab_size, seed=3)
    assert 0 < len(swapped.chats) <= len(batch.chats)
    for row, chat in enumerate(swapped.chats):
        old = batch.tokens[batch.chats.index(chat)]
        new = swapped.tokens[row]
        item = (torch.nonzero(swapped.item_mask[row]).flatten() + 1).tolist()
        said = tuple(new[item].tolist())
        assert min(said) >= 3 and said != tuple(old[item].tolist())
        changed = torch.nonzero(new != old).flatten().tolist()
        assert set(item) <= set(changed) or said == tuple(old[item].tolist())
        n = len(item)
        starts = [i for i in range(len(new) - n + 1) if tuple(new[i:i + n].tolist()) == said]
        assert len(starts) >= 2 and starts[-1] == item[0]  # told earlier and recalled, the same random tokens
        assert set(changed) <= {i + j for i in starts for j in range(n)}  # nothing else touched
    for row, q, k in swapped.copy_pairs.tolist():  # the key follows an earlier copy of the query's token
        assert k - 1 < q and swapped.tokens[row, k - 1] == swapped.tokens[row, q]
    assert random_items(batch, run.tokenizer.vocab_size, seed=3).tokens.equal(swapped.tokens)  # deterministic


def test_dense_scores_are_the_recorders(memory_run):
    """The monitor's first 4 repeated sequences are the probe set's 4: same scores as the snapshot's."""
    run = guppy.open_run(memory_run)
    step = max(run.snapshot_files)
    P = run.watch
    ours = repeated_tokens(run.tokenizer.vocab_size, n=4, start_id=run.tokenizer.start_id)
    rep = np.flatnonzero(P.period > 0)
    assert np.array_equal(ours[0].numpy(), P.tokens[rep][:, :ours[0].shape[1]])
    dense = dense_head_scores(run.model(step), *ours)
    recorded = run.read("heads/induction", step)  # (L, H); the recorder's prev_token also averages chats
    mine = np.array([[dense[f"induction.L{l}H{h}"] for h in range(4)] for l in range(2)])
    np.testing.assert_allclose(mine, recorded, atol=1e-5)


def test_resumed_monitor_keeps_earlier_rows(memory_run, tmp_path):
    from types import SimpleNamespace

    from guppy.run.reader import load_eval_data

    run_dir = tmp_path / "memory"
    shutil.copytree(memory_run, run_dir)
    run = guppy.open_run(run_dir)
    data = SimpleNamespace(tokenizer=run.tokenizer, chats=SimpleNamespace(eval=load_eval_data(run_dir)[1]))
    resumed = SimpleNamespace(run_dir=run_dir, step=10, tokens=0, total_steps=30, model=run.model(10), data=data)
    monitor = RecallMonitor(every=5, n_chats=16)
    monitor.on_train_start(resumed)  # what a trainer resumed at step 10 shows it
    assert [r["step"] for r in monitor.rows] == [0, 5, 10]
    assert read_recall(run_dir).step.tolist() == [0, 5, 10]


def test_recall_probe_ablates_every_head(memory_run, capsys):
    sys.path.insert(0, str(ROOT / "probes"))
    import recall_heads as probe

    assert probe.main(["--run", str(memory_run), "--chats", "16"]) == 0
    out = capsys.readouterr().out
    assert "chance" in out and "most induction-like" in out
    df = pd.read_csv(memory_run / "probes" / "recall_ablation.csv")
    heads = [f"L{l}H{h}" for l in range(2) for h in range(4)]
    assert df.site.tolist()[:10] == ["none", "chance"] + heads
    assert df.induction.iloc[2:10].between(0, 1).all()
    for joint in df.site.iloc[10:]:  # the copy heads together, if several share the copying
        assert set(joint.split("+")) <= set(heads[4:]) and "+" in joint


def test_frames_probe_scores_every_frame_and_pool(memory_run, capsys):
    sys.path.insert(0, str(ROOT / "probes"))
    import induction_frames

    assert induction_frames.main(["--run", str(memory_run), "--chats", "16"]) == 0
    assert "user turn, again" in capsys.readouterr().out
    df = pd.read_csv(memory_run / "probes" / "induction_frames.csv")
    assert len(df) == 8 and set(df.frame) == {"bare", "user turn", "user turn, again", "memory chat"}
    assert set(df.pool) == {"any token", "item tokens"}
    heads = [f"L1H{h}" for h in range(4)]
    assert df[heads + ["copy_token_acc"]].stack().between(0, 1).all() and "L0H0" not in df


def test_repeated_batch_points_the_second_copy_at_the_first():
    prefix, middle, period = [1, 7], [9, 9], 5
    b = repeated_batch(prefix, middle, period, torch.arange(20, 60), n=3)
    T = len(prefix) + 2 * period + len(middle)
    assert b.tokens.shape == (3, T) and b.item_mask[:, :T - period].sum() == 0
    for row, q, k in b.copy_pairs.tolist():  # from the second copy's token j to the first copy's token j + 1
        first = len(prefix) + (q - (T - period))
        assert k == first + 1 and b.tokens[row, q] == b.tokens[row, first]
    assert len(b.copy_pairs) == 3 * (period - 1)


def test_copy_heads_are_the_later_layers_best_copiers():
    sys.path.insert(0, str(ROOT / "probes"))
    from recall_heads import copy_heads

    scores = {"chat_induction.L0H0": 0.9, "chat_induction.L1H0": 0.30, "chat_induction.L1H1": 0.14,
              "chat_induction.L1H2": 0.34, "chat_induction.L2H0": 0.2}
    assert copy_heads(scores) == [(1, 0), (1, 2), (2, 0)]
    assert copy_heads({"chat_induction.L1H0": 0.0}) == []


def test_recall_probe_refuses_a_run_without_memory_chats(tiny_recorded_run, capsys):
    sys.path.insert(0, str(ROOT / "probes"))
    import recall_heads as probe

    assert probe.main(["--run", str(tiny_recorded_run)]) == 1
    assert "no memory chats" in capsys.readouterr().err


def test_figures_are_written(memory_run, tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import induction_figures

    assert induction_figures.main(["--run", str(memory_run), "--out", str(tmp_path)]) == 0
    for name in ("formation.png", "chat_patterns.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_dashboard_view(memory_run, tiny_recorded_run, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    shutil.copytree(memory_run, tmp_path / "memory")
    shutil.copytree(tiny_recorded_run, tmp_path / "plain")
    monkeypatch.setenv("GUPPY_RUNS_DIR", str(tmp_path))
    for run, expect_chart in (("memory", True), ("plain", False)):
        at = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=120)
        at.query_params["run"], at.query_params["view"] = run, "Induction"
        at.run()
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        assert bool(at.get("plotly_chart")) == expect_chart
        if not expect_chart:
            assert "make demo-induction" in at.info[0].value
        else:
            assert [m.label for m in at.metric][1] == "formed at step"


def test_cli_refuses_bad_flags(capsys):
    from experiments.induction import main

    with pytest.raises(SystemExit) as e:
        main(["--steps", "0"])
    assert e.value.code == 2 and "positive integer" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_monitor_measures_a_model_on_cuda(tmp_path):
    """The monitor's batches live on the CPU; the model it measures may not (this crashed on a GPU)."""
    cfg = tiny_train_config(tmp_path, preset="induction", memory_fraction=0.5, steps=4, device="cuda", eval_prompts=0)
    trainer = start_run(cfg, callbacks=[RecallMonitor(every=2, n_chats=16)], show_progress=False)
    assert trainer.fit() == "finished" and read_recall(trainer.run_dir).step.tolist() == [0, 2, 4]
