"""compare_runs over a real guppy-sweep (2 learning rates x 2 seeds) and over runs of different
shapes and lengths: settings, long frames, matched training time, seeds pooled."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pandas as pd
import pytest

import guppy


def final_from_csv(run_dir, column="eval_loss") -> float:
    with open(run_dir / "metrics.csv") as f:
        return [float(r[column]) for r in csv.DictReader(f) if r[column]][-1]


def test_a_sweep_folder_gives_its_runs_and_what_differs(tiny_sweep):
    cmp = guppy.compare_runs(tiny_sweep)
    assert list(cmp.runs) == ["lr-3e-3__seed-0", "lr-3e-3__seed-1", "lr-1e-3__seed-0", "lr-1e-3__seed-1"]
    assert cmp.varied == ["lr", "seed"] and cmp.groups == ["lr"]  # only what differs, the grid's order
    assert cmp.settings.loc["lr-1e-3__seed-1"].tolist() == [1e-3, 1]
    m = cmp.metrics
    assert list(m.columns[:3]) == ["run", "lr", "seed"] and {"loss", "eval_loss", "persona_pass"} <= set(m.metric)
    one = m[(m.run == "lr-3e-3__seed-0") & (m.metric == "eval_loss")]
    assert one.value.iloc[-1] == pytest.approx(final_from_csv(tiny_sweep / "lr-3e-3__seed-0"))
    h = cmp.head_metrics(("induction",))
    run = guppy.open_run(tiny_sweep / "lr-1e-3__seed-1")
    mine = run.head_metrics(("induction",))
    got = h[h.run == "lr-1e-3__seed-1"]
    assert len(got) == len(mine) and np.allclose(got.value.to_numpy(), mine.value.to_numpy())
    assert (got.lr == 1e-3).all() and got.tokens.notna().all()


def test_seeds_of_a_setting_are_pooled(tiny_sweep):
    cmp = guppy.compare_runs(tiny_sweep)
    final = cmp.final("eval_loss").set_index("lr")
    for lr, tag in ((3e-3, "3e-3"), (1e-3, "1e-3")):
        seeds = [final_from_csv(tiny_sweep / f"lr-{tag}__seed-{s}") for s in (0, 1)]
        assert final.loc[lr, "n"] == 2
        assert final.loc[lr, "mean"] == pytest.approx(np.mean(seeds))
        assert final.loc[lr, "std"] == pytest.approx(np.std(seeds, ddof=1))
        assert final.loc[lr, "min"] == pytest.approx(min(seeds))
    curves = cmp.curves("loss")
    assert set(curves.columns) == {"lr", "step", "mean", "std", "min", "max", "n"} and (curves.n == 2).all()
    one = guppy.compare_runs([tiny_sweep / "lr-3e-3__seed-0", tiny_sweep / "lr-1e-3__seed-0"])
    assert one.varied == ["lr"] and one.final().n.tolist() == [1, 1] and one.final()["std"].isna().all()


def test_runs_of_other_shapes_and_lengths_line_up(tiny_sweep, wide_short_run):
    tiny = tiny_sweep / "lr-3e-3__seed-0"
    cmp = guppy.compare_runs([tiny, wide_short_run])
    assert {"preset", "steps", "batch_size", "n_layers", "n_heads", "d_model"} <= set(cmp.varied)
    assert cmp.settings.loc["wide", "n_layers"] == 4 and cmp.settings.loc[tiny.name, "n_heads"] == 4
    h = cmp.head_metrics(("prev_token",))
    shapes = h.groupby("run")[["layer", "head"]].max()
    assert shapes.loc["wide"].tolist() == [3, 7] and shapes.loc[tiny.name].tolist() == [1, 3]
    both = h[(h.layer == 0) & (h["head"] == 0)]  # the same head of both runs, by (layer, head)
    assert set(both.run) == {tiny.name, "wide"}

    # matched training time: by step, the short run stops at 10; by tokens each run's own point
    assert cmp.at(8) == {tiny.name: 8, "wide": 8}
    at = cmp.at(16)
    assert at[tiny.name] == 16 and at["wide"] is None  # past the short run's end
    table = cmp.aligned("step")
    assert table.loc[10, "wide"] == 10 and pd.isna(table.loc[20, "wide"]) and table.loc[20, tiny.name] == 20
    by_tokens = cmp.aligned("tokens")
    snaps = cmp.snapshots
    for name in cmp.runs:
        col = by_tokens[name].dropna()
        assert col.is_monotonic_increasing  # later in training, never an earlier snapshot
        mine = snaps[snaps.run == name].set_index("step").tokens
        assert all(mine[s] <= t for t, s in col.items())  # never a snapshot from the future
    epoch = cmp.at(float(snaps[snaps.run == "wide"].epoch.max()), by="epoch")
    assert epoch["wide"] == 10 and epoch[tiny.name] is not None
    with pytest.raises(ValueError, match="expected one of step, epoch, tokens"):
        cmp.at(1, by="time")


def test_a_folder_of_runs_and_a_half_started_sweep(tiny_sweep, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_sweep, folder)
    shutil.rmtree(folder / "lr-1e-3__seed-1")  # not started yet: no run.json
    assert len(guppy.compare_runs(folder).runs) == 3
    (folder / "sweep.json").unlink()  # no sweep.json: any folder of runs
    assert sorted(guppy.compare_runs(folder).runs) == sorted(["lr-3e-3__seed-0", "lr-3e-3__seed-1", "lr-1e-3__seed-0"])
    with pytest.raises(guppy.RunError, match="no such run or sweep folder"):
        guppy.compare_runs(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(guppy.RunError, match="no run with a run.json"):
        guppy.compare_runs(tmp_path / "empty")
