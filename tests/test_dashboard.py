"""The dashboard: its pure data shaping against independent computations, and every view run
through Streamlit's AppTest on the tiny recorded run (widgets change, charts render, no exception)."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

import guppy  # noqa: E402
from dashboards import shaping  # noqa: E402
from guppy.run import format as R  # noqa: E402

APP = str(ROOT / "dashboards" / "app.py")
VIEWS = ["Run overview", "Walkthrough", "Attention", "Head metrics", "Residual stream", "Gradients", "Ablation"]  # + Probes


# ---- a runs directory: two good runs, a broken one, a half-written one, one with a bad snapshot


@pytest.fixture(scope="module")
def runs_dir(tiny_recorded_run, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dash_runs")
    for name in ("good", "other", "badsnap", "probed"):
        shutil.copytree(tiny_recorded_run, root / name, ignore=shutil.ignore_patterns("probes"))
    write_probe_outputs(root / "probed")
    shutil.copytree(Path(__file__).parent / "data" / "legacy" / "run-v1", root / "legacy")  # schema 1: probes.h5
    (root / "broken").mkdir()
    (root / "broken" / "run.json").write_text("{ not json")
    (root / "half").mkdir()  # guppy-train died before writing run.json
    snaps = sorted((root / "badsnap" / "snapshots").glob("step-*.h5"))
    snaps[len(snaps) // 2].write_bytes(b"this is not an HDF5 file")
    return root


def write_probe_outputs(run_dir: Path) -> None:
    """What a probe script leaves: two tables and an HTML figure through guppy.analysis.probe_runner.write_outputs
    (plotly.min.js beside it), plus a lone CSV from some other tool."""
    import pandas as pd
    import plotly.graph_objects as go

    from guppy.analysis.probe_runner import write_outputs

    run = guppy.open_run(run_dir)
    resid = pd.DataFrame({"step": [40, 40], "point": ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
                          "recovered": [0.25, 1.0]})
    heads = pd.DataFrame({"step": [40], "layer": [0], "head": [1], "recovered": [0.5]})
    write_outputs(run, "patching", {"resid": resid, "heads": heads}, go.Figure(go.Bar(x=[0, 1], y=[0.25, 1.0])))
    (run_dir / "probes" / "notes_by_hand.csv").write_text("a,b\n1,2\n")


def app(runs_dir: Path, monkeypatch, view: str = "Run overview", run: str | None = "good") -> AppTest:
    monkeypatch.setenv("GUPPY_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=120)
    if run:
        at.query_params["run"] = run
    at.query_params["view"] = view
    return at.run()


def charts(at: AppTest) -> list[dict]:
    """Every plotly figure on the page as a dict (AppTest keeps it as JSON in proto.spec)."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def z_of(fig: dict) -> np.ndarray:
    """A heatmap's z, decoding plotly's typed-array form ({dtype, bdata, shape})."""
    z = fig["data"][0]["z"]
    if isinstance(z, dict):
        return np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(
            [int(s) for s in str(z["shape"]).split(",")])
    return np.array(z, dtype=float)


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


# ---- pure data shaping ----------------------------------------------------------------------


def test_token_labels_are_unique_and_visible():
    vocab = ["a", " ", "a", "\n"]
    labels = shaping.token_labels(vocab, [0, 2, 0, 1, 3])
    assert len(set(labels)) == 5
    assert labels[3] == "3·␣" and labels[4] == "4·↵"


def test_labels_name_layer_and_head():
    assert shaping.hook_label("blocks.3.attn.hook_pattern") == "L3 attn pattern"
    assert shaping.hook_label("blocks.0.hook_resid_pre") == "L0 resid_pre"
    assert shaping.param_label("blocks.1.mlp.W_in.weight") == "L1 mlp.W_in.weight"
    assert shaping.param_label("W_pos") == "W_pos"
    assert shaping.head_label(2, 5) == "L2H5"


def test_paths_outside_the_runs_dir_are_refused(tmp_path):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "runs" / "link").symlink_to(tmp_path / "secret")
    assert shaping.safe_run_path(tmp_path / "runs", "a") == (tmp_path / "runs" / "a").resolve()
    for bad in ("../secret", "/etc", "link", ".", "a/../.."):
        with pytest.raises(ValueError, match="refused"):
            shaping.safe_run_path(tmp_path / "runs", bad)


def test_input_pattern_masks_the_future():
    p = np.random.default_rng(0).random((2, 3, 6, 6)).astype(np.float16)
    out = shaping.input_pattern(p, 1, 4)
    assert out.shape == (3, 4, 4) and out.dtype == np.float32
    assert np.isnan(out[:, 0, 1]).all() and not np.isnan(np.tril(out[0])).any()
    np.testing.assert_allclose(np.tril(out[2]), np.tril(p[1, 2, :4, :4].astype(np.float32)))


def test_tile_patterns_places_each_head():
    L, H, n = 2, 3, 4
    pats = [np.arange(H * n * n, dtype=np.float32).reshape(H, n, n) + 100 * l for l in range(L)]
    z, x, y, xt, yt = shaping.tile_patterns(pats, [f"{i}·t" for i in range(n)])
    assert z.shape == (L * (n + 1) - 1, H * (n + 1) - 1)
    assert len(set(x)) == len(x) == z.shape[1] and len(set(y)) == len(y) == z.shape[0]
    np.testing.assert_array_equal(z[5:9, 10:14], pats[1][2])  # layer 1, head 2
    assert np.isnan(z[4]).all() and np.isnan(z[:, 4]).all()
    assert xt[1] == ["H0", "H1", "H2"] and yt[1] == ["L0", "L1"]


def test_layer_similarity_matches_torch_cosine():
    rng = np.random.default_rng(1)
    resids = [rng.standard_normal((2, 7, 5)).astype(np.float16) for _ in range(3)]
    sim = shaping.layer_similarity(resids, 1, 6)
    t = [torch.from_numpy(r[1, :6].astype(np.float32)) for r in resids]
    want = np.array([[torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item() for b in t] for a in t])
    np.testing.assert_allclose(sim, want, atol=1e-5)


def test_logit_lens_ranks_the_true_next_token():
    vocab = [f"t{i}" for i in range(10)]
    ids = np.array([1, 2, 3])
    top = np.zeros((2, 1, 3, 5), dtype=np.int16)
    top[0, 0, 0] = [2, 0, 0, 0, 0]  # point 0 guesses the next token (2) first at position 0
    top[1, 0, 1] = [9, 8, 3, 0, 0]  # point 1 has the next token (3) third at position 1
    rank, top1, top5 = shaping.logit_lens(top, 0, ids, vocab)
    assert rank.shape == (2, 2)
    assert rank[0, 0] == 1 and rank[1, 1] == 3 and np.isnan(rank[0, 1]) and np.isnan(rank[1, 0])
    assert top1[1, 1] == "t9" and top5[1, 1].startswith("t9 | t8 | t3")


def test_ablation_view_losses_match_the_recorded_loss(tiny_recorded_run):
    """The ablation view's clean loss per input (reply mask, full forward) reproduces what the
    recorder measured (its own forward, decoding reply positions only)."""
    from dashboards.views.ablation import input_losses

    run = guppy.open_run(tiny_recorded_run)
    step = max(run.snapshot_files)
    mine = input_losses.__wrapped__(str(run.path), step, 0, (), "zero")
    np.testing.assert_allclose(mine, run.read(R.LOSS_BY_INPUT, step), rtol=1e-3, atol=1e-3)


def test_head_cube_matches_the_snapshots(tiny_recorded_run):
    from dashboards import cache

    run = guppy.open_run(tiny_recorded_run)
    key = tuple((s, cache._mtime(f)) for s, f in run.snapshot_files.items())
    steps, cube = cache.head_cube(str(run.path), key)
    assert steps == list(run.snapshot_files)
    frame = run.head_metrics()  # the public long frame, read independently
    for metric in ("induction", "entropy", "out_norm"):
        assert cube[metric].shape == (len(steps), run.model_config.n_layers, run.model_config.n_heads)
        for i, step in enumerate(steps):
            rows = frame[(frame.metric == metric) & (frame.step == step)]
            np.testing.assert_allclose(cube[metric][i][rows.layer, rows["head"]], rows.value, rtol=1e-6)


def test_top_heads_and_fixed_ranges():
    cube = {"prev_token": np.zeros((3, 2, 2)), "induction": np.zeros((3, 2, 2)), "entropy": np.linspace(0.5, 2, 12).reshape(3, 2, 2)}
    cube["induction"][-1, 1, 0] = 0.9
    cube["prev_token"][-1, 0, 1] = 0.7
    cube["prev_token"][-1, 1, 0] = 0.8  # the same head again: listed once
    assert shaping.top_heads(cube, 2) == ["L1H0", "L0H1"]
    assert shaping.metric_range(cube["induction"], "induction") == (0.0, 1.0)
    assert shaping.metric_range(cube["entropy"], "entropy") == (0.0, 2.0)


def test_next_step_loops():
    assert shaping.next_step([0, 2, 8], 2) == 8 and shaping.next_step([0, 2, 8], 8) == 0


def test_run_signature_sees_a_new_snapshot(runs_dir, tmp_path):
    run = tmp_path / "live"
    shutil.copytree(runs_dir / "good", run)
    before = shaping.run_signature(run)
    src = sorted((run / "snapshots").glob("step-*.h5"))[-1]
    shutil.copy(src, run / "snapshots" / "step-999999.h5")
    assert shaping.run_signature(run) != before


def test_runs_dir_option(monkeypatch):
    from dashboards.app import runs_dir_from  # noqa: PLC0415 - importing runs the page once, bare

    monkeypatch.setenv("GUPPY_RUNS_DIR", "/from/env")
    assert runs_dir_from(["--runs-dir", "/x/runs"]) == Path("/x/runs")
    assert runs_dir_from(["-q", "tests"]) == Path("/from/env")
    monkeypatch.delenv("GUPPY_RUNS_DIR")
    assert runs_dir_from([]) == Path("runs")


# ---- every view through AppTest -------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
def test_view_renders(runs_dir, monkeypatch, view):
    at = app(runs_dir, monkeypatch, view)
    ok(at)
    assert charts(at), f"{view}: no chart"
    assert at.title[0].value == f"good · {view}"


@pytest.mark.parametrize("view", VIEWS)
def test_a_run_written_by_the_previous_format_renders(runs_dir, monkeypatch, view):
    at = app(runs_dir, monkeypatch, view, run="legacy")
    ok(at)
    assert charts(at), f"{view}: no chart for the schema-1 run"


def test_overview_compares_two_runs_and_shows_replies(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Run overview")
    at.multiselect(key="compare").set_value(["other"]).run()
    ok(at)
    names = {t.get("name") for t in charts(at)[0]["data"]}
    assert {"good", "other"} <= names
    replies = [df.value for df in at.dataframe]
    assert len(replies) == 2 and len(replies[0]) == len(guppy.open_run(runs_dir / "good").snapshot_files)


def test_attention_slider_probe_head_and_play(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Attention")
    grid0, head0 = charts(at)
    steps = sorted(guppy.open_run(runs_dir / "good").snapshot_files)
    at.select_slider(key="attn_step").set_value(steps[1]).run()
    ok(at)
    grid1, _ = charts(at)
    assert "step" in grid1["layout"]["title"]["text"] and grid1["layout"]["title"]["text"] != grid0["layout"]["title"]["text"]
    assert not np.allclose(np.nan_to_num(z_of(grid0)), np.nan_to_num(z_of(grid1)))
    z = z_of(grid1)
    assert np.nanmin(z) >= 0 and np.nanmax(z) <= 1 and grid1["data"][0]["zmax"] == 1  # fixed, sequential scale
    labels = grid1["data"][0]["x"]
    assert len(set(labels)) == len(labels) and any("·" in s for s in labels)  # token text for tooltips
    last_probe = int(guppy.open_run(runs_dir / "good").watch_subset[-1])  # a repeated-tokens probe
    at.selectbox(key="attn_input").set_value(last_probe).run()
    at.selectbox(key="attn_layer").set_value(1).run()
    at.selectbox(key="attn_head").set_value(2).run()
    ok(at)
    assert charts(at)[1]["layout"]["title"]["text"].startswith("L1H2")
    at.toggle(key="attn_play").set_value(True).run()  # the play button steps one snapshot per run
    ok(at)
    assert at.select_slider(key="attn_step").value == steps[2]


def test_head_metrics_slider_and_lines(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Head metrics")
    heat0 = charts(at)[0]
    steps = sorted(guppy.open_run(runs_dir / "good").snapshot_files)
    at.select_slider(key="heads_step").set_value(steps[0]).run()
    heat1, lines = charts(at)
    ok(at)
    assert heat0["data"][0]["zmin"] == heat1["data"][0]["zmin"] and heat0["data"][0]["zmax"] == heat1["data"][0]["zmax"]
    assert len(heat1["data"]) == 4  # entropy, previous-token, induction, first-token
    at.multiselect(key="heads_metrics").set_value(["induction"]).run()
    at.multiselect(key="heads_lines").set_value(["L0H0", "L1H3"]).run()
    at.toggle(key="heads_logx").set_value(False).run()
    ok(at)
    heat, lines = charts(at)
    assert len(heat["data"]) == 1 and {t["name"] for t in lines["data"]} == {"L0H0", "L1H3"}


def test_residual_slider_and_probe(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Residual stream")
    ok(at)
    titles = [c["layout"]["title"]["text"] for c in charts(at)]
    assert any("logit lens" in t for t in titles) and any("cosine" in t for t in titles)
    sim = next(c for c in charts(at) if "cosine" in c["layout"]["title"]["text"])
    assert sim["data"][0]["zmid"] == 0 and np.allclose(np.diag(z_of(sim)), 1, atol=1e-3)  # diverging, centred
    steps = sorted(guppy.open_run(runs_dir / "good").snapshot_files)
    at.select_slider(key="resid_step").set_value(steps[0]).run()
    at.selectbox(key="resid_input").set_value(int(guppy.open_run(runs_dir / "good").watch_subset[-1])).run()
    ok(at)
    assert all(f"step {steps[0]}" in c["layout"]["title"]["text"] for c in charts(at)[1:])


def test_gradients_mark_the_healthy_range(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Gradients")
    ok(at)
    figs = charts(at)
    assert len(figs) == 4
    lines = figs[-1]
    assert any(s.get("type") == "rect" for s in lines["layout"]["shapes"])
    assert {t for trace in lines["data"] for t in trace["text"]} == set(figs[0]["data"][0]["y"])  # a line each
    assert len(lines["data"]) <= 4  # ... drawn as one trace per family
    assert any("L0 attn" in y for y in figs[0]["data"][0]["y"])  # parameters named by layer


def test_ablation_changes_loss_and_reply(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Ablation")
    ok(at)
    assert at.metric[1].delta in ("+0.000", "-0.000")
    cfg = guppy.open_run(runs_dir / "good").model_config
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            at.checkbox(key=f"abl_{l}_{h}").check()
    at.run()
    ok(at)
    assert float(at.metric[1].delta) != 0  # every head gone: the loss moves
    delta = charts(at)[0]["data"][0]
    assert delta["marker"]["cmid"] == 0  # deltas on a diverging scale
    at.radio(key="abl_method").set_value("mean").run()
    at.text_input(key="abl_prompt").input("is the water cold?").run()
    ok(at)
    assert "ablated reply" in " ".join(m.value for m in at.markdown)


def test_probes_view_without_outputs_says_how_to_make_them(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Probes")
    ok(at)
    assert "No probe outputs" in at.info[0].value
    assert "probes/head_types.py --run" in at.code[0].value and not at.get("iframe")


def test_probes_view_shows_tables_and_the_figure(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Probes", run="probed")
    ok(at)
    assert at.selectbox(key="probe_output").options[:2] and len(at.selectbox(key="probe_output").options) == 2
    at.selectbox(key="probe_output").set_value("patching").run()
    ok(at)
    tables = {len(df.value) for df in at.dataframe}
    assert tables == {1, 2} and {"patching_heads.csv", "patching_resid.csv"} <= {h.value for h in at.subheader}
    (frame,) = at.get("iframe")
    html = frame.proto.srcdoc
    assert "Plotly.newPlot" in html and '<script src="plotly.min.js">' not in html  # the bundle is inlined
    assert len(html) > 1e6
    at.selectbox(key="probe_output").set_value("notes_by_hand").run()
    ok(at)
    assert len(at.dataframe) == 1 and at.dataframe[0].value.columns.tolist() == ["a", "b"] and not at.get("iframe")


# ---- failures stay in the page --------------------------------------------------------------


def test_features_view_without_saes_says_how_to_make_them(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Features")
    ok(at)
    assert "No features computed" in at.info[0].value and at.code[0].value.startswith("guppy-sae ")


def test_features_view_cards_search_and_lifeline(runs_dir, tiny_sae_run, monkeypatch):
    """The Features view of a run with SAEs: headline numbers, the figure over training, a topic search that
    picks that topic's best feature, its card (held-out chats shaded by activation, histogram, lifeline), and
    the snapshot slider moving the card to another step."""
    if not (runs_dir / "featured").exists():
        shutil.copytree(tiny_sae_run, runs_dir / "featured")
    at = app(runs_dir, monkeypatch, "Features", run="featured")
    ok(at)
    run = guppy.open_run(runs_dir / "featured")
    summary, topics = run.feature_summary(), run.feature_topics()
    assert [m.label for m in at.metric][:2] == ["topics found, first snapshot", "topics found, last snapshot"]
    assert at.metric[1].value == f"{summary.topics_found_share.iloc[-1]:.0%}"
    figs = charts(at)
    assert [f["layout"]["title"]["text"] for f in figs][0] == "the fish's features over training"
    assert figs[0]["data"][0]["name"].startswith("topics found")
    at.text_input(key="features_query").input("wat").run()
    ok(at)
    assert at.selectbox(key="features_topic").value == "water"
    best = topics[(topics.step == summary.step.iloc[-1]) & (topics.topic == "water")].feature.iloc[0]
    assert at.number_input(key="features_pick_water").value == best
    assert any(f"#### feature {best} at step {summary.step.iloc[-1]}" == m.value for m in at.markdown)
    assert any("rgba(255,120,0," in m.value for m in at.markdown)  # a shaded top chat
    titles = [f["layout"]["title"]["text"] for f in charts(at)]
    assert any("activation histogram" in t for t in titles) and any(t.startswith("lineage ") for t in titles)
    first = int(summary.step.iloc[0])
    at.select_slider(key="features_step").set_value(first).run()
    ok(at)
    assert any(m.value == f"#### feature {best} at step {first}" for m in at.markdown)


def test_empty_runs_dir_says_how_to_make_a_run(tmp_path, monkeypatch):
    at = app(tmp_path, monkeypatch, run=None)
    ok(at)
    assert "No runs" in at.info[0].value and "guppy-train" in at.code[0].value


@pytest.mark.parametrize("name", ["broken", "half"])
def test_a_broken_run_shows_an_error_and_others_still_work(runs_dir, monkeypatch, name):
    at = app(runs_dir, monkeypatch, "Run overview", run=name)
    assert not at.exception
    assert at.error and name in at.error[0].value
    at.selectbox(key="run").set_value("good").run()
    ok(at)
    assert charts(at)


def test_a_corrupt_snapshot_is_skipped_with_a_warning(runs_dir, monkeypatch):
    for view in ("Attention", "Head metrics", "Run overview"):
        at = app(runs_dir, monkeypatch, view, run="badsnap")
        ok(at)
        assert any("unreadable" in w.value for w in at.warning)
        assert charts(at)


def test_paths_outside_are_refused_in_the_page(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Run overview", run="../../etc")
    assert not at.exception
    assert "refused" in at.error[0].value
    assert not charts(at)


def test_auto_refresh_toggle(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, "Run overview")
    at.toggle(key="live").set_value(True).run()
    ok(at)
    assert charts(at)


# ---- the README's first screen: make dashboard, and the line each training target ends with ------


def test_make_dashboard_serves_the_runs_folder_on_localhost(tiny_recorded_run, tmp_path):
    """`make dashboard` as make would run it (make -n), with the venv's python for .venv/bin: the
    server answers its health check, bound to localhost, over the runs folder."""
    import os
    import shlex
    import subprocess
    import time
    import urllib.request

    from dashboards.browser import free_port

    port = free_port()
    dry = subprocess.run(["make", "-n", "-s", "--no-print-directory", "-o", ".venv/.installed-stamp", "dashboard", f"PORT={port}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    argv = shlex.split(dry)
    assert argv[0].endswith("streamlit") and argv[1:3] == ["run", "dashboards/app.py"]
    assert argv[argv.index("--") + 1:] == ["--runs-dir", "runs"] and argv[argv.index("--server.port") + 1] == str(port)
    runs = tmp_path / "work"
    shutil.copytree(ROOT / "dashboards", runs / "dashboards")
    shutil.copytree(ROOT / ".streamlit", runs / ".streamlit")  # the localhost binding
    (runs / "runs").mkdir()
    shutil.copytree(tiny_recorded_run, runs / "runs" / "tiny")
    cmd = [sys.executable, "-m", "streamlit", *argv[1:]]
    proc = subprocess.Popen(cmd, cwd=runs, env=os.environ | {"PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2).read() == b"ok"
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)


def test_each_training_target_ends_with_the_dashboard_and_its_run():
    import subprocess

    for target, prefix in (("demo", "demo-"), ("reference", "reference-"), ("demo-induction", "induction-")):
        out = subprocess.run(["make", "-n", "--no-print-directory", "-o", ".venv/.installed-stamp", "-o", ".venv-tl4/.installed-stamp", target], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()
        last = out[-1]
        assert last.startswith('echo "next: make dashboard, then open http://localhost:8501/?run=' + prefix), last
        run = last.split("?run=")[1].rstrip('"')
        assert any(f"runs/{run}" in line or f"--run-name {run}" in line for line in out[:-1]), (target, run)


def test_head_and_ablation_views_say_what_was_knocked_out_while_training(tiny_recorded_run, tmp_path, monkeypatch):
    shutil.copytree(tiny_recorded_run, tmp_path / "knocked", ignore=shutil.ignore_patterns("probes"))
    meta = json.loads((tmp_path / "knocked" / "run.json").read_text())
    meta["train_config"] |= {"ablate": "L0H1,L1.mlp", "ablate_steps": "3:", "freeze": "embed.weight"}
    (tmp_path / "knocked" / "run.json").write_text(json.dumps(meta))
    said = "L0H1, L1.mlp zero-ablated during steps 3:; frozen: embed.weight"
    assert shaping.interventions(meta) == said and shaping.ablated_heads(meta) == {(0, 1)}
    assert shaping.interventions(json.loads((tiny_recorded_run / "run.json").read_text())) == ""
    at = app(tmp_path, monkeypatch, "Head metrics", run="knocked")
    ok(at)
    assert said in at.warning[0].value
    marks = [t for t in charts(at)[0]["data"] if t.get("mode") == "text"]
    assert marks and marks[0]["x"] == ["H1"] and marks[0]["y"] == ["L0"]
    at = app(tmp_path, monkeypatch, "Ablation", run="knocked")
    ok(at)
    assert said in at.warning[0].value and at.checkbox(key="abl_0_1").label == "L0H1 ✕"
