"""The dashboard in a real browser: `streamlit run` on a free localhost port, headless Chromium
(Debian's /usr/bin/chromium) driven by Playwright. Loads the attention view, moves the snapshot
slider, checks the chart the browser drew changed, and saves a screenshot as a test artifact.

Setup (what `make test` installs): `apt-get install -y chromium` and `pip install playwright`
(the Python package only; no browser download)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboards import browser as B  # noqa: E402

ARTIFACTS = ROOT / "runs" / "artifacts"

pytestmark = pytest.mark.skipif(bool(B.missing()), reason=f"no browser to drive: {B.missing()}")


def test_slider_move_redraws_the_chart(tiny_recorded_run, tmp_path):
    runs_dir = Path(tiny_recorded_run).parent
    name = Path(tiny_recorded_run).name
    with B.serve(runs_dir, log=tmp_path / "streamlit.log") as url, B.browser() as page:
        assert url.startswith("http://127.0.0.1:")
        seconds = B.load(page, f"{url}?run={name}&view=Attention", charts=2)
        assert page.locator("[data-testid='stException']").count() == 0
        before = B.fingerprint(page, 0)
        assert before and "every head at step" in before
        moved = B.move_slider(page, "ArrowLeft")  # waits until chart 0 shows other data
        after = B.fingerprint(page, 0)
        assert after != before and after.split(" | ")[0] != before.split(" | ")[0]  # another step's title
        assert page.locator("[data-testid='stException']").count() == 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard-attention.png"
        page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}\nfirst view {seconds:.2f} s, slider move {moved:.2f} s")


def test_the_docs_screenshot_command_writes_a_picture(tiny_recorded_run, tmp_path, capsys):
    """docs/dashboard.md's command (dashboards/browser.py), on the suite's run."""
    page = (ROOT / "docs" / "dashboard.md").read_text()
    (line,) = [x for x in page.splitlines() if "dashboards/browser.py" in x]
    assert "--view Attention --out docs/dashboard.png" in line
    out = tmp_path / "dashboard.png"
    runs_dir, name = Path(tiny_recorded_run).parent, Path(tiny_recorded_run).name
    argv = ["--runs-dir", str(runs_dir), "--run", name, "--view", "Attention", "--out", str(out)]
    assert B.main(argv) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*"))  # written whole, then renamed
    assert B.main(argv[:3] + ["nope"] + argv[4:]) == 1
    assert "no such run folder" in capsys.readouterr().err


def test_features_view_in_the_browser(tiny_sae_run, tmp_path):
    """The Features view of a run with SAEs, drawn by Chromium: the figure, the feature card's charts and its
    shaded chats, and the snapshot slider moving the card (its histogram's title names the step)."""
    runs_dir = tmp_path / "runs"
    shutil.copytree(tiny_sae_run, runs_dir / "featured")
    with B.serve(runs_dir, log=tmp_path / "streamlit.log") as url, B.browser() as page:
        B.load(page, f"{url}?run=featured&view=Features", charts=3)
        assert page.locator("[data-testid='stException']").count() == 0
        before = B.fingerprint(page, 1)
        assert before and "activation histogram" in before
        assert page.locator("span[title]").count() > 0  # the top chats' tokens, shaded
        B.move_slider(page, "ArrowLeft", index=1)  # waits until the histogram shows another step
        after = B.fingerprint(page, 1)
        assert after.split(" | ")[0] != before.split(" | ")[0]
        assert page.locator("[data-testid='stException']").count() == 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-features.png"), full_page=True)


def test_the_features_pages_screenshot_command_runs(tiny_sae_run, tmp_path):
    """docs/features.md's command for its picture of the Features view, on the suite's run with SAEs."""
    import shlex

    page = (ROOT / "docs" / "features.md").read_text()
    (line,) = [x for x in page.splitlines() if x.startswith(".venv/bin/python dashboards/browser.py ")]
    args = shlex.split(line)[2:]
    given = dict(zip(args[::2], args[1::2]))
    assert given["--view"] == "Features" and given["--out"] == "docs/features/view.png"
    given |= {"--runs-dir": str(Path(tiny_sae_run).parent), "--run": Path(tiny_sae_run).name,
              "--out": str(tmp_path / "view.png")}
    assert B.main([x for kv in given.items() for x in kv]) == 0
    assert (tmp_path / "view.png").stat().st_size > 10_000


def test_walkthrough_shows_the_reply_and_a_caption_per_layer_for_a_typed_prompt(tiny_recorded_run, tmp_path):
    import guppy
    from guppy.analysis.captions import visible

    runs_dir, name = Path(tiny_recorded_run).parent, Path(tiny_recorded_run).name
    run = guppy.open_run(tiny_recorded_run)
    L = run.model_config.n_layers
    prompt = "is the water cold?"
    e = guppy.explain(run, prompt)  # what the page must show, computed here
    plain = [c.text.replace("`", "") for c in e.captions()]  # markdown code spans lose their backticks on screen
    charts = L + 4  # tokens, embedding, one per layer, output, reply
    with B.serve(runs_dir, log=tmp_path / "streamlit.log") as url, B.browser() as page:
        B.load(page, f"{url}?run={name}&view=Walkthrough", charts=charts)
        typed = B.enter_text(page, "prompt (press Enter)", prompt, index=2)  # layer 0's attention redraws
        assert page.locator("[data-testid='stException']").count() == 0
        text = page.inner_text("[data-testid='stMain']")
        assert f"At step {e.step} the fish replies: {visible(e.reply)}" in text  # whitespace shown as the view shows it
        # the browser's text of a block may end in a space (the hover icon): compared stripped
        blocks = [b.strip() for b in page.locator("[data-testid='stMarkdownContainer']").all_inner_texts()]
        for l in range(L):  # one caption per layer, the one explain wrote
            assert [b for b in blocks if b.startswith(f"Layer {l}:")] == [plain[2 + l]]
        assert plain[0] in blocks and plain[-2] in blocks  # the tokens and the output
        assert page.locator(".js-plotly-plot").count() == charts
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard-walkthrough.png"
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}\ntyped prompt to redrawn page {typed:.2f} s")


def test_the_walkthrough_pages_screenshot_command_runs(tiny_recorded_run, tmp_path):
    import shlex

    page = (ROOT / "docs" / "walkthrough.md").read_text()
    (line,) = [x for x in page.splitlines() if x.startswith(".venv/bin/python dashboards/browser.py ")]
    args = shlex.split(line)[2:]
    given = dict(zip(args[::2], args[1::2]))
    assert given["--view"] == "Walkthrough" and given["--out"] == "docs/walkthrough.png"
    given |= {"--runs-dir": str(Path(tiny_recorded_run).parent), "--run": Path(tiny_recorded_run).name,
              "--out": str(tmp_path / "walkthrough.png")}
    assert B.main([x for kv in given.items() for x in kv]) == 0
    assert (tmp_path / "walkthrough.png").stat().st_size > 10_000
