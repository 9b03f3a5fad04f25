"""The README and docs/ stay true: their examples run, and every relative link resolves."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
DATA_PAGE = (ROOT / "docs" / "data.md").read_text()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_hooks_snippet_runs():
    hooks = python_blocks(README)[0]
    assert "names_filter=" in hooks and "run_with_hooks" in hooks
    scope: dict = {}
    exec(compile(hooks, "README.md", "exec"), scope)
    assert tuple(scope["cache"].stack("attn.hook_pattern").shape) == (6, 2, 6, 32, 32)


def test_the_open_run_snippet_runs_on_a_recorded_run(tiny_recorded_run):
    code = python_blocks(README)[1]
    assert '"runs/demo"' in code
    scope: dict = {}
    exec(compile(code.replace('"runs/demo"', repr(str(tiny_recorded_run))), "README.md", "exec"), scope)
    assert scope["model"].cfg == scope["run"].model_config and scope["step"] in scope["run"].checkpoint_steps


def test_data_commands_run():
    commands = [line.split("#")[0].strip() for line in DATA_PAGE.splitlines() if line.startswith("guppy-data ")]
    assert len(commands) == 3
    for cmd in commands:
        args = shlex.split(cmd)[1:]
        r = subprocess.run([sys.executable, "-m", "guppy.data.cli", *args], capture_output=True, text=True,
                           timeout=180, cwd=ROOT, env=os.environ | {"PYTHONPATH": os.getcwd()})
        assert r.returncode == 0, (cmd, r.stderr)
        assert "eval_pairs_in_train" in r.stdout


def _links(text: str) -> list[str]:
    """Relative link targets of a markdown text (images too), outside code blocks."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return [m for m in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", m)]


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 10
    broken = []
    for page in pages:
        for link in _links(page.read_text()):
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.relative_to(ROOT)}: {link}")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_is_a_front_door():
    lines = README.splitlines()
    assert len(lines) <= 300
    first = "\n".join(lines[:25])
    assert "make demo" in first and "make test" in first and "make dashboard" in first
    for page in ("reference", "experiments", "induction", "divergence", "guppylm", "scaling", "benchmarks", "run-format"):
        assert f"(docs/{page}.md)" in README, page


def test_the_architecture_page_names_every_module_and_public_name():
    import guppy

    page = (ROOT / "docs" / "architecture.md").read_text()
    modules = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "guppy").rglob("*.py")) if p.name != "__init__.py"]
    assert [m for m in modules if f"`{m}`" not in page] == []
    assert [n for n in guppy.__all__ if f"`{n}`" not in page] == []
    for name in guppy.__all__:
        assert getattr(guppy, name) is not None
    top = [p.name for p in (ROOT / "guppy").glob("*.py")]
    assert len(top) <= 6, top
