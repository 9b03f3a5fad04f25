"""Probes: what the scripts in probes/ wrote for this run (runs/<name>/probes/): each CSV as a
table, and the script's own interactive plotly figure, embedded. Found through
`Run.probe_outputs()`; the probe scripts themselves are never imported here."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

import guppy
from dashboards.cache import READ_ERRORS, RunHandle, _mtime
from guppy.run.format import PROBE_OUTPUTS_DIR

SCRIPTS = ("ablate_heads", "head_types", "logit_lens", "attribution", "patching", "topic_probe")
FIGURE_HEIGHT = 720


@st.cache_data(max_entries=32, show_spinner=False)
def table(path: str, name: str, key: str, mtime: int):
    """One CSV a probe wrote (key "" for name.csv), cached until the file changes."""
    return guppy.open_run(path).probe_outputs()[name].read(key)


@st.cache_data(max_entries=4, show_spinner=False)
def standalone_html(path: str, mtime: int, js_mtime: int) -> str:
    """The probe's HTML with the plotly.min.js it loads from its folder inlined: an embedded
    page (an iframe's srcdoc) has no folder to load it from."""
    html = Path(path).read_text()
    tag = '<script src="plotly.min.js"></script>'
    js = Path(path).with_name("plotly.min.js")
    if tag in html and js.exists():
        html = html.replace(tag, f"<script>{js.read_text()}</script>", 1)
    return html


def render(h: RunHandle, others=()) -> None:
    try:
        outputs = h.run.probe_outputs()
    except OSError as e:
        st.error(f"{h.name}: cannot list the probe outputs: {e}")
        return
    inside = {n: o for n, o in outputs.items()  # a link out of the run folder is not followed
              if all(p.resolve().is_relative_to(h.path.resolve()) for p in [*o.tables.values(), o.html] if p)}
    for n in outputs.keys() - inside.keys():
        st.warning(f"{h.name}: probe output {n!r} points outside the run folder and is not shown")
    outputs = inside
    if not outputs:
        st.info(f"No probe outputs for this run yet (nothing in `{h.path / PROBE_OUTPUTS_DIR}`). Run a probe, then reload:")
        st.code("\n".join(f"python probes/{s}.py --run {h.path}" for s in SCRIPTS), language="bash")
        return
    name = st.selectbox("probe output", list(outputs), key="probe_output",
                        format_func=lambda n: f"{n} ({len(outputs[n].tables)} table{'s' * (len(outputs[n].tables) != 1)}"
                                              f"{', figure' if outputs[n].html else ''})")
    out = outputs[name]
    if out.html is not None:
        c1, c2 = st.columns([4, 1])
        c1.caption(f"`{out.html}`")
        c2.download_button("download HTML", data=out.html.read_bytes(), file_name=out.html.name, mime="text/html",
                           key="probe_download")
        js = out.html.with_name("plotly.min.js")
        st.iframe(standalone_html(str(out.html), _mtime(out.html), _mtime(js)), height=FIGURE_HEIGHT)
    for key, path in out.tables.items():
        try:
            df = table(str(h.path), name, key, _mtime(path))
        except READ_ERRORS as e:
            st.error(str(e))
            continue
        st.subheader(path.name)
        st.caption(f"{len(df):,} rows · `{path}`")
        st.dataframe(df, width="stretch", height=min(38 + 35 * len(df), 420), hide_index=True)
