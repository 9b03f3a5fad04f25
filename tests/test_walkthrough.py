"""The dashboard's Walkthrough view through Streamlit's AppTest: a caption per layer written by
guppy.explain, a prompt typed or picked from the watch set, two steps side by side with what
changed, the reply token by token, a post-LN rotary run, an imported run without snapshots, and the
run overview's link to it. (The real-browser test is in test_dashboard_browser.py.)"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from guppylm_files import series_run  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

import guppy  # noqa: E402
from dashboards.shaping import user_prompt  # noqa: E402
from dashboards.views.walkthrough import replies_line  # noqa: E402  the view's own line

APP = str(ROOT / "dashboards" / "app.py")


@pytest.fixture(scope="module")
def runs_dir(tiny_recorded_run, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("walk_runs")
    shutil.copytree(tiny_recorded_run, root / "good", ignore=shutil.ignore_patterns("probes"))
    return root


def app(runs_dir: Path, monkeypatch, run: str = "good", view: str = "Walkthrough") -> AppTest:
    monkeypatch.setenv("GUPPY_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"], at.query_params["view"] = run, view
    return at.run()


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def test_the_walkthrough_captions_each_layer_of_the_reply(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch)
    ok(at)
    run = guppy.open_run(runs_dir / "good")
    prompt = at.text_input(key="walk_prompt").value
    w = run.watch
    assert prompt == user_prompt(w.text[w.kind.index("chat")])  # the watch set's first chat
    e = guppy.explain(run, prompt)
    shown = texts(at)
    assert replies_line(e) in shown
    caps = e.captions()
    assert [c.text for c in caps] == [t for t in shown if not t.startswith("**")]  # in order, one each
    assert {m.help for m in at.markdown if m.value == caps[2].text} == {caps[2].numbers}  # numbers on hover
    assert len(at.get("plotly_chart")) == run.model_config.n_layers + 4
    at.text_input(key="walk_prompt").input("is the water cold?").run()
    ok(at)
    e2 = guppy.explain(run, "is the water cold?")
    assert [c.text for c in e2.captions()] == [t for t in texts(at) if not t.startswith("**")]
    last = len(e2.predictions) - 1
    at.select_slider(key="walk_token").set_value(last).run()  # the reply's last token
    ok(at)
    assert [c.text for c in e2.captions(last)] == [t for t in texts(at) if not t.startswith("**")]


def test_picking_a_chat_of_the_watch_set_fills_the_prompt(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch)
    options = at.selectbox(key="walk_pick").options
    at.selectbox(key="walk_pick").set_value(options[-1]).run()
    ok(at)
    assert at.text_input(key="walk_prompt").value == options[-1]


def test_the_toggle_puts_two_steps_side_by_side_with_what_changed(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch)
    run = guppy.open_run(runs_dir / "good")
    steps = run.checkpoint_steps
    at.toggle(key="walk_compare").set_value(True).run()
    ok(at)
    assert at.select_slider(key="walk_step_b").value == steps[0]
    prompt = at.text_input(key="walk_prompt").value
    early, late = (guppy.explain(run, prompt, step=s) for s in (steps[0], steps[-1]))
    change = early.compare(late)
    changed = [m for m in at.markdown if m.value.startswith("**What changed.**")]
    assert [m.value for m in changed] == [f"**What changed.** {change.text}"] and changed[0].help == change.numbers
    assert len(at.get("plotly_chart")) == 2 * (run.model_config.n_layers + 4)
    for e in (early, late):
        assert replies_line(e) in texts(at)
    at.select_slider(key="walk_step_b").set_value(steps[1]).run()  # another pair of steps, another sentence
    ok(at)
    other = guppy.explain(run, prompt, step=steps[1]).compare(late)
    assert f"**What changed.** {other.text}" in texts(at)
    at.toggle(key="walk_compare").set_value(False).run()
    ok(at)
    assert len(at.get("plotly_chart")) == run.model_config.n_layers + 4


def test_a_post_ln_rotary_run_walks_through_and_says_what_attribution_cannot_show(tmp_path, monkeypatch):
    from conftest import tiny_train_config

    from guppy.train.trainer import start_run

    cfg = tiny_train_config(tmp_path, steps=4, run_name="v", record=True, record_inputs=3, eval_prompts=0,
                            positional="rotary", norm="post", n_layers=3, n_heads=2)
    trainer = start_run(cfg, show_progress=False)
    assert trainer.fit() == "finished"
    at = app(trainer.run_dir.parent, monkeypatch, run="v")
    ok(at)
    layers = [t for t in texts(at) if t.startswith("Layer ")]
    assert [t.split(":")[0] for t in layers] == ["Layer 0", "Layer 1", "Layer 2"]
    assert all("pushed" not in t and "looked" in t or "spread" in t for t in layers)  # no contributions to claim
    assert any("needs a pre-LN model" in t for t in texts(at)) and any("(rotary)" in t for t in texts(at))
    at.toggle(key="walk_compare").set_value(True).run()
    ok(at)
    assert any(t.startswith("**What changed.**") and "cannot be read off" in t for t in texts(at))


def test_an_imported_run_without_snapshots_walks_through_its_checkpoints(series_run, tmp_path, monkeypatch):
    run, states = series_run
    shutil.copytree(run, tmp_path / "runs" / "guppylm")
    at = app(tmp_path / "runs", monkeypatch, run="guppylm")
    ok(at)
    assert at.text_input(key="walk_prompt").value == "hi guppy"  # no watch set: nothing to pick from
    assert at.select_slider(key="walk_step").options == [str(s) for s in sorted(states)] or \
        list(at.select_slider(key="walk_step").options) == [f"step {s}" for s in sorted(states)]
    assert any(t.startswith("Layer 1:") for t in texts(at))


def test_the_run_overview_links_to_the_walkthrough(runs_dir, monkeypatch):
    at = app(runs_dir, monkeypatch, view="Run overview")
    ok(at)
    at.button(key="to_walkthrough").click().run()
    ok(at)
    assert at.title[0].value == "good · Walkthrough" and at.query_params["view"] == "Walkthrough"
    assert any(t.startswith("Layer 0:") for t in texts(at))
