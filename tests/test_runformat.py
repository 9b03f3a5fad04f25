"""The run format is defined once (guppy.run.format): no module types a key of its own, the
package has no import cycles, old runs stay readable and one bad file hides nothing else."""

from __future__ import annotations

import ast
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import guppy
from guppy.record.measures import default_measures
from guppy.run import format as R
from guppy.run.reader import RunError

ROOT = Path(__file__).parents[1]
LEGACY_RUN = Path(__file__).parent / "data" / "legacy" / "run-v1"  # written by guppy at schema 1 (161dc63)


# ---- one definition -------------------------------------------------------------------------


def _format_literals() -> set[str]:
    """Every dataset key and file name runformat defines (bare group names like "heads" are
    ordinary words too, so only keys with a slash and file names count)."""
    values = {v for k, v in vars(R).items() if k.isupper() and isinstance(v, str)}
    values |= set(R.LEGACY_KEYS.values()) | {R.head_key(m) for m in R.HEAD_METRICS}
    return {v for v in values if "/" in v or v.endswith((".h5", ".json", ".csv"))}


def _string_constants(tree: ast.AST):
    """String constants that are not docstrings, and the literal parts of f-strings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_dataset_key_or_file_name_is_typed_outside_the_format_module():
    keys = _format_literals()
    assert {"loss/by_input", "heads/out_norm", "watch.h5", "run.json"} <= keys
    offenders = []
    for folder in ("guppy", "dashboards", "probes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "guppy" / "run" / "format.py":
                continue
            for line, value in _string_constants(ast.parse(path.read_text())):
                if value in keys or value.startswith((f"{R.ACTS}/", f"{R.HEADS}/")):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert not offenders, "use the names of guppy.run.format:\n" + "\n".join(offenders)


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))}


def _imports(path: Path, package: str) -> set[str]:
    """guppy modules a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            # from guppy.run import format: the package, and each name that may be a module of it
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_package_has_no_import_cycles():
    modules = {_module_name(p): p for p in (ROOT / "guppy").rglob("*.py")}
    assert {"guppy.data", "guppy.model", "guppy.train", "guppy.run", "guppy.record", "guppy.health", "guppy.bridges",
            "guppy.analysis"} <= set(modules), "the subpackages"
    # importing a module imports its package's __init__ first: an edge to each parent package
    graph = {m: {d for d in _imports(p, "guppy") | _parents(m) if d in modules and d != m} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # the layering the format promises: readers never reach the trainer
    for reader in ("guppy.run.reader", "guppy.run.compare", "guppy.record.recorder", "guppy.record.measures", "guppy.run.format",
                   "guppy.train.callbacks", "guppy.analysis.probe_runner", "guppy.analysis.memory_recall"):
        reach, todo = set(), [reader]
        while todo:
            for d in graph[todo.pop()] - reach:
                reach.add(d)
                todo.append(d)
        assert "guppy.train.trainer" not in reach, f"{reader} reaches guppy.train.trainer"
    for leaf in ("guppy.run.format", "guppy.train.callbacks"):  # the schema and the callback protocol import no guppy module
        assert graph[leaf] <= _parents(leaf), (leaf, graph[leaf])


def test_every_guppy_import_in_the_tree_resolves():
    """`from guppy.x import y` anywhere (inside functions too, where nothing runs it at import time)
    names a module or attribute that exists: moving a name cannot leave a caller behind."""
    import importlib.util

    missing = []
    for folder in ("guppy", "dashboards", "probes", "experiments", "benchmarks", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "guppy":
                    module = importlib.import_module(node.module)
                    for a in node.names:
                        if not hasattr(module, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None:
                            missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {a.name}")
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name.split(".")[0] == "guppy" and importlib.util.find_spec(a.name) is None:
                            missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {a.name}")
    assert not missing, "\n".join(missing)


def test_hook_vocabulary_follows_transformer_lens():
    from transformer_lens.utilities import get_act_name

    for short in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "z",
                  "attn_scores", "pattern", "result", "rot_q", "rot_k", "pre", "post"):
        assert R.act_name(short, 3) == get_act_name(short, 3)
    for short in ("embed", "pos_embed", "scale"):
        assert R.act_name(short) == get_act_name(short)
    with pytest.raises(ValueError, match="unknown short name 'qq'"):
        R.act_name("qq", 1)
    assert R.layer_of("blocks.11.attn.hook_z") == 11 and R.layer_of("blocks.2.mlp.W_in") == 2
    assert R.layer_of("hook_embed") is None and R.layer_of("ln_final.hook_scale") is None
    assert R.resid_points(2) == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    assert R.resid_alias("blocks.0.hook_resid_post") == "blocks.1.hook_resid_pre"
    assert R.resid_alias("blocks.0.hook_resid_pre") is None


def test_a_snapshot_holds_exactly_what_the_measures_declare(tiny_recorded_run):
    declared = {k for m in default_measures() for k in m.keys}
    run = guppy.open_run(tiny_recorded_run)
    with h5py.File(run.snapshot_files[max(run.snapshot_files)], "r") as f:
        written = set()
        f.visititems(lambda name, obj: written.add(name) if isinstance(obj, h5py.Dataset) else None)
        assert set(f.attrs) == set(R.SNAPSHOT_ATTRS) and f.attrs["schema_version"] == R.SCHEMA_VERSION
    stored = {k for k in written if k.startswith(R.ACTS + "/")}
    assert stored and (written - stored) == declared - {R.ACTS}
    assert R.head_key("out_norm") in written and set(R.HEAD_METRICS) == {k.split("/")[1] for k in written
                                                                           if R.group_of(k) == R.HEADS}
    assert (Path(tiny_recorded_run) / R.WATCH_FILE).exists()


# ---- old runs and damaged files -----------------------------------------------------------------


def test_a_run_written_before_the_format_module_still_opens(tmp_path):
    """tests/data/legacy/run-v1: a tiny recorded run written by the previous code (schema 1:
    probes.h5, loss/by_probe, record_probes)."""
    run = guppy.open_run(LEGACY_RUN)
    assert run.schema == 1 and run.config.record_inputs == 4
    steps = list(run.snapshots["step"])
    assert steps == [0, 6, 12] and not run.unreadable
    loss = run.read(R.LOSS_BY_INPUT, 12)  # stored as loss/by_probe
    assert loss.shape == (len(run.watch.kind),) and np.isfinite(loss).all()
    assert set(run.read("loss", 12)) >= {"by_input", "mean", "by_topic"}  # the group, in today's names
    assert run.watch_table["stored"].sum() == 4
    assert run.acts("blocks.0.attn.hook_pattern", 6).shape[0] == 4
    assert len(run.head_metrics()) == 3 * 2 * 4 * 6
    model = run.model(12)
    assert model.cfg.n_layers == 2
    assert run.metrics["loss"].notna().any()


def test_one_unreadable_snapshot_hides_nothing_else(tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(LEGACY_RUN, copy)
    R.snapshot_path(copy, 6).write_bytes(b"\x89HDF\r\n truncated copy")
    run = guppy.open_run(copy)
    with pytest.warns(RuntimeWarning, match="1 unreadable snapshot"):
        assert list(run.snapshots["step"]) == [0, 12]
    assert list(run.unreadable) == [6] and "step-000006.h5" in run.unreadable[6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the readable ones read without complaint
        assert run.read(R.LOSS_MEAN, 12) > 0 and run.acts("blocks.0.attn.hook_pattern", 0).shape[0] == 4
    assert sorted(run.head_metrics()["step"].unique()) == [0, 12]
    with pytest.raises(RunError, match="step-000006.h5: not a readable HDF5 snapshot"):
        run.read(R.LOSS_MEAN, 6)


def test_record_hooks_are_checked_before_the_run_folder_exists(tmp_path, tiny_cli_args, capsys):
    from guppy.train.trainer import main

    args = tiny_cli_args(tmp_path, steps=5) + ["--runs-dir", str(tmp_path / "runs"), "--run-name", "typo",
                                               "--record", "--record-hooks", "blocks.*.attn.hook_patern"]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "'blocks.*.attn.hook_patern' matches no hook point" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "typo").exists()


def test_the_readme_measure_example_records_and_reads_back(tiny_recorded_run, tmp_path, monkeypatch):
    """README "adding a measure": its class, added to the recorder, lands in the snapshot file."""
    import re
    from types import SimpleNamespace

    from guppy.record.measures import Measure
    from guppy.record.recorder import Recorder

    (code,) = re.findall(r"```\n(class MaxResid.*?)```", (ROOT / "docs" / "run-format.md").read_text(), re.S)
    monkeypatch.setattr(R, "RESID_MAX", "resid/max", raising=False)  # what the README asks you to declare
    space = {"Measure": Measure, "R": R, "np": np}
    exec(compile(code, "README.md", "exec"), space)
    src = guppy.open_run(tiny_recorded_run)
    model = src.model("latest")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(R.watch_path(src.path), run_dir / R.WATCH_FILE)
    recorder = Recorder(measures=default_measures() + [space["MaxResid"]()])
    view = SimpleNamespace(run_dir=run_dir, model=model, data=SimpleNamespace(tokenizer=src.tokenizer), total_steps=1,
                           step=1, epoch_progress=1.0, tokens=0, elapsed=0.0)
    recorder.start(run_dir, model, view.data, 1)
    path = recorder.snapshot(view)
    with h5py.File(path, "r") as f:
        top = f["resid/max"][()]
    assert top.shape == (model.cfg.n_layers + 1,) and (top > 0).all()
