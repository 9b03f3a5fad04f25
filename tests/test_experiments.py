"""The README's article experiments (experiments/article.py): every line is in the README and plans
as guppy-sweep would run it, and every figure panel draws from a real (tiny) sweep."""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import article as experiments  # noqa: E402  (experiments/article.py)

from guppy.train.sweep import parse_vary, plan  # noqa: E402


def test_every_experiment_is_one_readme_line_and_plans_as_guppy_sweep_would():
    readme = (ROOT / "docs" / "experiments.md").read_text()
    for exp in experiments.EXPERIMENTS.values():
        assert exp.line() in readme, exp.line()
        assert f"(experiments/{exp.name}.png)" in readme
        argv = shlex.split(exp.line())
        own, base = argv[1:argv.index("--")], argv[argv.index("--") + 1:]
        vary = [parse_vary(own[i + 1]) for i, a in enumerate(own) if a == "--vary"]
        seeds = own[own.index("--seeds") + 1].split(",") if "--seeds" in own else []
        runs = plan(exp.sweep, vary, seeds, base)  # every run's flags checked as guppy-train checks them
        assert len(runs) >= 2 and all("--record" in r.flags for r in runs)


@pytest.mark.parametrize("inside", sorted(experiments.INSIDE))
def test_each_figure_panel_draws_from_a_sweep(tiny_sweep, tmp_path, inside):
    pytest.importorskip("matplotlib")
    exp = replace(experiments.EXPERIMENTS["lr"], inside=inside)
    out = experiments.draw(exp, tiny_sweep, tmp_path / "fig.png")
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*"))  # written whole, then renamed


def test_the_summary_pools_seeds_per_setting(tiny_sweep):
    import guppy

    rows = experiments.summary(guppy.compare_runs(tiny_sweep))
    assert [r["setting"] for r in rows] == ["lr=0.003", "lr=0.001"] and all(r["runs"] == 2 for r in rows)
    assert all(r["eval_loss"] > 0 and r["status"] == "finished" for r in rows)


def test_an_unknown_experiment_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        experiments.main(["figure", "lrr"])
    assert e.value.code == 2 and "unknown experiment 'lrr'" in capsys.readouterr().err


def test_the_knockout_figure_and_numbers_come_from_the_runs_recall_tables(tmp_path, capsys):
    """experiments/knockout.py on two runs' recall.csv: the numbers it prints are the tables'."""
    pytest.importorskip("matplotlib")
    import json

    import knockout
    import numpy as np
    import pandas as pd

    from guppy.config import TrainConfig

    steps = np.arange(0, 1001, 100)
    for name, ablate, recall in (("intact", "", steps / 2000), ("ko", "L0H3", np.zeros(len(steps)))):
        (tmp_path / name).mkdir()
        cfg = TrainConfig(preset="induction", ablate=ablate, ablate_steps="500:" if ablate else "")
        (tmp_path / name / "run.json").write_text(json.dumps({"train_config": cfg.to_dict(), "status": "finished",
                                                             "schema_version": 2}))
        table = {"step": steps, "recall_acc": recall}
        for h in range(4):
            table[f"prev_token.L0H{h}"] = np.full(len(steps), 0.1 + 0.1 * h)
            table[f"chat_induction.L1H{h}"] = np.full(len(steps), 0.05 * h)
        if not ablate:  # a table with the standard probe's columns, and one without (older runs)
            for h in range(4):
                table[f"induction.L1H{h}"] = np.where(steps >= 600, 0.2 * h, 0.0)
            table["icl_drop"] = steps / 250
        pd.DataFrame(table).to_csv(tmp_path / name / "recall.csv", index=False)
    out = tmp_path / "ko.png"
    assert knockout.main(["--runs", str(tmp_path / "intact"), str(tmp_path / "ko"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "intact: nothing knocked out -> recall 50.0% of held-out chats at step 1000 (20% first at step 400)" in said
    assert "ko: L0H3 knocked out at steps 500: -> recall 0.0%" in said and "(never 20%)" in said
    assert "previous-token head L0H2 0.30, knocked-out L0H3 0.40" in said and "copy head L1H3 0.15" in said
    assert "previous-token head L0H3 0.40; best" in said  # in the intact run
    assert ("best layer-1 induction head on repeated random tokens L1H3 0.60 (a head first above 0.5 at step 600); "
            "in-context loss drop 4.00 nats") in said
    assert said.count("induction head on repeated") == 1  # the knocked-out run's table has no such columns
