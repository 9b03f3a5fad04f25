"""The dashboard's compare mode and Sweep view through AppTest: runs of different shapes side by
side at matched training time, a sweep's runs one per setting, and what each setting did."""

from __future__ import annotations

import base64
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import guppy  # noqa: E402
from dashboards import alignment, shaping  # noqa: E402
from tests.test_dashboard import app, charts, ok, z_of  # noqa: E402


@pytest.fixture(scope="module")
def runs_dir(tiny_recorded_run, wide_short_run, tiny_sweep, tmp_path_factory) -> Path:
    """'good' (2 layers x 4 heads, 40 steps), 'wide' (4 x 8, 10 steps) and the sweep 'lr' (4 runs)."""
    root = tmp_path_factory.mktemp("cmp_runs")
    shutil.copytree(tiny_recorded_run, root / "good")
    shutil.copytree(wide_short_run, root / "wide")
    shutil.copytree(tiny_sweep, root / "lr")
    return root


# ---- pure pieces ---------------------------------------------------------------------------------


def test_sweeps_list_their_runs(runs_dir):
    names = shaping.list_runs(runs_dir)
    assert {"good", "wide", "lr/lr-3e-3__seed-0", "lr/lr-1e-3__seed-1"} <= set(names) and "lr" not in names
    assert alignment.list_sweeps(runs_dir) == ["lr"]
    members = alignment.sweep_members(runs_dir, "lr")
    assert [m for m, _ in members][:2] == ["lr/lr-3e-3__seed-0", "lr/lr-3e-3__seed-1"]
    assert alignment.one_per_setting(members) == ["lr/lr-3e-3__seed-0", "lr/lr-1e-3__seed-0"]


def test_padding_lines_up_layers_and_heads():
    g = alignment.pad_grid(np.ones((2, 4)), 4, 8)
    assert g.shape == (4, 8) and (g[:2, :4] == 1).all() and np.isnan(g[2:]).all() and np.isnan(g[:, 4:]).all()
    pats = alignment.pad_patterns([np.zeros((4, 3, 3))] * 2, 4, 8)
    assert len(pats) == 4 and pats[0].shape == (8, 3, 3) and np.isnan(pats[0][4:]).all() and np.isnan(pats[3]).all()
    assert alignment.by_layer(["blocks.0.a", "blocks.0.b", "blocks.1.a", "embed.W_E"], [3, 4, 1, 2]) == \
        {"L0": 5.0, "L1": 1.0, "embed / final": 2.0}
    two = ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    four = ["blocks.2.hook_resid_pre", "blocks.3.hook_resid_post", "hook_embed"]
    assert alignment.points_in_order(two + four) == [
        "embed", "resid after 0 layers", "L0 attn_out", "resid after 1 layer", "resid after 2 layers",
        "resid after 4 layers"]  # a 2-layer run's last point is a 4-layer run's third boundary


# ---- compare mode --------------------------------------------------------------------------------


def compared(runs_dir, monkeypatch, view, others=("wide",), run="good"):
    at = app(runs_dir, monkeypatch, view, run=run)
    at.multiselect(key="compare").set_value(list(others)).run()
    ok(at)
    return at


@pytest.mark.parametrize("view, n_maps", [("Attention", 2), ("Head metrics", 2), ("Ablation", 2)])
def test_layer_head_maps_side_by_side_line_up(runs_dir, monkeypatch, view, n_maps):
    at = compared(runs_dir, monkeypatch, view)
    maps = [c for c in charts(at) if c["data"][0].get("type") == "heatmap"]
    assert len(maps) == n_maps
    good, wide = (z_of(m) for m in maps)
    assert good.shape == wide.shape  # the 2 x 4 run drawn on the 4 x 8 run's grid
    if view != "Attention":
        assert good.shape == (4, 8) and np.isnan(good[2:]).all() and np.isnan(good[:, 4:]).all()
        assert np.isfinite(good[:2, :4]).all() and np.isfinite(wide).all()
        assert maps[0]["data"][0]["zmin"] == maps[1]["data"][0]["zmin"]  # one colour range for both
    else:
        tiles = [int(v) for v in maps[1]["layout"]["yaxis"]["ticktext"] and [len(maps[1]["layout"]["yaxis"]["ticktext"])]]
        assert tiles == [4] and maps[0]["layout"]["yaxis"]["ticktext"] == maps[1]["layout"]["yaxis"]["ticktext"]


def test_lines_by_layer_have_one_trace_per_run(runs_dir, monkeypatch):
    for view in ("Residual stream", "Gradients"):
        at = compared(runs_dir, monkeypatch, view)
        for fig in charts(at):
            assert [t["name"] for t in fig["data"]] == ["good", "wide"], view
        layers = charts(at)[0]["data"]
        assert len(layers[1]["x"]) > len(layers[0]["x"])  # the deeper run has more layer boundaries
        assert set(layers[0]["x"]) <= set(layers[1]["x"])  # ... named the same where both have them


def test_matched_training_time(runs_dir, monkeypatch):
    at = compared(runs_dir, monkeypatch, "Head metrics")
    assert at.select_slider(key="cmp_when").value == 10  # starts where both runs still have a snapshot
    at.select_slider(key="cmp_when").set_value(40).run()  # past the 10-step run's end
    ok(at)
    assert any("No snapshot" in i.value for i in at.info)
    maps = [c for c in charts(at) if c["data"][0].get("type") == "heatmap"]
    assert len(maps) == 1 and "step 40" in maps[0]["layout"]["title"]["text"]
    at.radio(key="cmp_by").set_value("tokens").run()
    ok(at)
    wide = guppy.open_run(runs_dir / "wide").snapshots
    good = guppy.open_run(runs_dir / "good").snapshots
    when = at.select_slider(key="cmp_when").value
    assert when == int(min(wide.tokens.max(), good.tokens.max()))
    titles = [c["layout"]["title"]["text"] for c in charts(at) if c["data"][0].get("type") == "heatmap"]
    expect_good = int(good[good.tokens <= when].step.max())
    assert f"step {expect_good}" in titles[0] and "step 10" in titles[1]
    at.multiselect(key="cmp_heads_lines").set_value(["L0H0", "L3H7"]).run()
    ok(at)
    names = {t["name"] for t in charts(at)[-1]["data"]}
    assert names == {"good L0H0", "wide L0H0", "wide L3H7"}  # the 2 x 4 run has no L3H7


def test_a_sweeps_runs_side_by_side(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Head metrics", run="lr/lr-3e-3__seed-0")
    at.toggle(key="compare_sweep").set_value(True).run()
    ok(at)
    maps = [c for c in charts(at) if c["data"][0].get("type") == "heatmap"]
    assert len(maps) == 2 and "lr/lr-1e-3__seed-0" in " ".join(m.value for m in at.markdown)


def test_overview_compares_up_to_four(runs_dir, monkeypatch):
    at = compared(runs_dir, monkeypatch, "Run overview", others=("wide", "lr/lr-3e-3__seed-0", "lr/lr-1e-3__seed-0"))
    names = {t.get("name") for t in charts(at)[0]["data"]}
    assert names == {"good", "wide", "lr/lr-3e-3__seed-0", "lr/lr-1e-3__seed-0"}
    colours = {t["line"]["color"] for t in charts(at)[0]["data"]}
    assert len(colours) == 4


def array(v) -> np.ndarray:
    """A plotly trace array, decoding its typed-array form ({dtype, bdata})."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).astype(float)
    return np.asarray(v, dtype=float)


# ---- the Sweep view ------------------------------------------------------------------------------


def test_sweep_view(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Sweep", run="lr/lr-3e-3__seed-0")
    ok(at)
    outcomes, curves = charts(at)
    dots = [t for t in outcomes["data"] if t["mode"] == "markers"]
    assert len(dots) == 2 and all(len(t["text"]) == 4 for t in dots)  # eval loss and pass rate, a dot per run
    means = [t for t in outcomes["data"] if t["mode"] == "lines+markers"]
    assert all(t["error_y"]["array"] for t in means) and all(len(t["x"]) == 2 for t in means)
    cmp = guppy.compare_runs(runs_dir / "lr")
    final = cmp.final("eval_loss")
    assert sorted(array(means[0]["y"])) == pytest.approx(sorted(final["mean"]))
    mean_curves = [t for t in curves["data"] if t["mode"] == "lines+markers"]
    bands = [t for t in curves["data"] if t.get("fill") == "tonexty"]
    assert len(mean_curves) == 2 and len(bands) == 2  # two seeds each: a band per setting
    assert mean_curves[0]["line"]["color"] != mean_curves[1]["line"]["color"]
    at.selectbox(key="sweep_metric").set_value("persona_pass").run()
    ok(at)
    assert "persona pass rate" in charts(at)[1]["layout"]["title"]["text"]
    tables = [df.value for df in at.dataframe]
    assert len(tables) == 2 and all((t.n == 2).all() for t in tables)


def test_sweep_view_without_a_sweep_says_how(runs_dir, tmp_path, monkeypatch):
    shutil.copytree(runs_dir / "good", tmp_path / "good")
    at = app(tmp_path, monkeypatch, "Sweep", run="good")
    ok(at)
    assert "No sweep" in at.info[0].value and "guppy-sweep" in at.code[0].value


def test_a_folder_of_runs_from_a_job_scheduler_is_a_sweep_too(runs_dir, tmp_path, monkeypatch):
    """`guppy-sweep --list | xargs ...` leaves run folders and no sweep.json."""
    shutil.copytree(runs_dir / "lr", tmp_path / "listed", ignore=shutil.ignore_patterns("sweep.json", "_logs"))
    assert "listed/lr-1e-3__seed-0" in shaping.list_runs(tmp_path)
    at = app(tmp_path, monkeypatch, "Sweep", run="listed/lr-1e-3__seed-0")
    ok(at)
    assert len(charts(at)) == 2 and "4 finished" in at.caption[0].value
