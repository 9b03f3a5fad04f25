"""experiments/reference_figures.py end to end on the suite's tiny recorded run: the probes run, every
figure is a PNG, the numbers are printed; a bad --run is one error line."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "reference_figures.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script():
    spec = importlib.util.spec_from_file_location("reference_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~23 s on 2 busy cores: four probe processes, each importing torch
def test_draws_every_figure_and_prints_the_numbers(tiny_recorded_run, tmp_path, capsys):
    run = shutil.copytree(tiny_recorded_run, tmp_path / "run")  # the probes write into the run: keep ours apart
    shutil.rmtree(run / "probes", ignore_errors=True)
    F = load_script()
    out = tmp_path / "figures"
    assert F.main(["--run", str(run), "--out", str(out), "--ablate-snapshots", "3"]) == 0
    for name in F.FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and 5_000 < len(data) < 200_000, name
    assert sorted(p.name for p in out.iterdir()) == sorted(F.FIGURES)  # no temp files left
    printed = capsys.readouterr().out
    for what in ("probes/ablate_heads.py --snapshot", "resid norm", "logit lens, step", "topic probe, step",
                 "head types, step", "ablation (mean), step", "s wall"):
        assert what in printed, what
    # the ablation ran on the log-spaced snapshots only, mean ablation only, no generation
    ablation = pd.read_csv(run / "probes" / "ablate_heads.csv")
    steps = sorted(ablation.step.unique())
    assert steps == F.log_spaced(sorted(int(p.stem.split("-")[1]) for p in (run / "snapshots").glob("*.h5")), 3)
    assert 1 < len(steps) <= 4 and set(ablation.method) == {"mean"} and "pass_rate" not in ablation
    # --reuse draws the same figures from the outputs already there, running no probe
    assert F.main(["--run", str(run), "--out", str(out), "--reuse"]) == 0
    assert "probes/" not in capsys.readouterr().out.split("wrote")[0]


def test_log_spaced_keeps_the_last_step_and_skips_the_first_percent():
    F = load_script()
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 89, 178, 267, 356, 445, 534, 623, 712, 801, 891]
    assert F.log_spaced(steps, 6) == [8, 16, 64, 178, 356, 891]
    assert F.log_spaced([0, 5], 6) == [5] and F.log_spaced([0], 3) == [0]


def test_a_bad_run_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and proc.stderr.startswith("reference_figures.py: error:")
    assert "nope" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()
