"""guppy-train --ablate / --freeze: an ablated site's output is replaced and its weights move by
weight decay alone; frozen weights are bit-identical; resume, sweeps and compare keep them."""

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import MINI, tiny_train_config

from guppy.config import TrainConfig
from guppy.model.transformer import GuppyLM
from guppy.run.compare import compare_runs
from guppy.run.format import parse_sites, parse_steps
from guppy.train.callbacks import Callback
from guppy.train.sweep import plan
from guppy.train.trainer import lr_at, start_run


class Weights(Callback):
    """The weights at the start and after chosen steps (copies)."""

    def __init__(self, *steps):
        self.steps, self.at = steps, {}

    def _keep(self, view):
        self.at[view.step] = {k: v.detach().clone() for k, v in view.model.state_dict().items()}

    def on_train_start(self, view):
        self._keep(view)

    def on_step_end(self, view):
        if view.step in self.steps:
            self._keep(view)


class Interrupt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, view):
        if view.step == self.step:
            raise KeyboardInterrupt


def decay(cfg, total: int, start: int, stop: int) -> float:
    """What AdamW's decoupled weight decay alone does to a weight over steps start..stop-1."""
    factor = 1.0
    for s in range(start, stop):
        factor *= 1 - lr_at(s, total, cfg) * cfg.weight_decay
    return factor


def head_parts(state, layer, head, H=4, E=8):
    """The head's rows of W_Q, W_K, W_V (qkv weight and bias) and its columns of W_O."""
    qkv = state[f"blocks.{layer}.attn.qkv.weight"].view(3, H, E, -1)[:, head]
    bias = state[f"blocks.{layer}.attn.qkv.bias"].view(3, H, E)[:, head]
    out = state[f"blocks.{layer}.attn.out.weight"].view(-1, H, E)[:, head]
    return qkv, bias, out


def train(tmp_path, callbacks=(), **overrides):
    cfg = tiny_train_config(tmp_path, **{"steps": 8, "eval_prompts": 0} | overrides)
    trainer = start_run(cfg, callbacks=list(callbacks), show_progress=False)
    assert trainer.fit() == "finished"
    return trainer


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_an_ablated_head_moves_by_weight_decay_alone(tmp_path, kind):
    """From step 3 on (AdamW has momentum by then, which must not move the head either); mean
    ablation gives W_O's columns a gradient, which must be dropped."""
    seen = Weights(3)
    trainer = train(tmp_path, [seen], ablate="L0H1", ablate_kind=kind, ablate_steps="3:")
    cfg, end = trainer.cfg, trainer.model.state_dict()
    factor = decay(cfg, 8, 3, 8)
    (q3, b3, o3), (q8, b8, o8) = head_parts(seen.at[3], 0, 1), head_parts(end, 0, 1)
    torch.testing.assert_close(q8, q3 * factor, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(o8, o3 * factor, rtol=1e-6, atol=1e-9)
    assert torch.equal(b8, b3)  # biases have no weight decay: they do not move at all
    # before step 3 it trained; its neighbour trains all along (the test could fail)
    q0 = head_parts(seen.at[0], 0, 1)[0]
    assert not torch.allclose(q3, q0 * decay(cfg, 8, 0, 3), rtol=1e-3)
    other3, other8 = head_parts(seen.at[3], 0, 2)[0], head_parts(end, 0, 2)[0]
    assert not torch.allclose(other8, other3 * factor, rtol=1e-3)
    # the head's output is what replaces it: zero, or one vector at every position
    tokens = torch.randint(0, 400, (2, 12))
    _, cache = trainer.model.run_with_cache(tokens, names="blocks.0.attn.hook_z")
    assert float(cache["blocks.0.attn.hook_z"][:, :, 1].abs().max()) > 0  # the loop took its hooks off


def test_the_ablation_replaces_the_output_while_it_lasts(tmp_path):
    class Look(Callback):
        def __init__(self):
            self.z = {}

        def on_step_end(self, view):
            tokens = torch.randint(5, 400, (2, 12))
            _, cache = view.model.run_with_cache(tokens, names=["blocks.1.attn.hook_z", "blocks.0.hook_mlp_out"])
            self.z[view.step] = (cache["blocks.1.attn.hook_z"], cache["blocks.0.hook_mlp_out"])

    look = Look()
    train(tmp_path, [look], ablate="L1H3+L0.mlp", ablate_kind="mean", ablate_steps=":4")
    for step in (1, 4):  # inside the window: the step just taken was ablated
        z, mlp = look.z[step]
        assert torch.allclose(z[:, :, 3], z[:1, :1, 3].expand_as(z[:, :, 3]))  # one vector everywhere
        assert float(z[:, :, 3].abs().max()) > 0 and torch.allclose(mlp, mlp[:1, :1].expand_as(mlp))
    z, mlp = look.z[5]  # after it: the model's own outputs again
    assert not torch.allclose(z[:, :, 3], z[:1, :1, 3].expand_as(z[:, :, 3]))


def test_an_ablated_mlp_moves_by_decay_and_frozen_weights_not_at_all(tmp_path):
    seen = Weights()
    trainer = train(tmp_path, [seen], ablate="L1.mlp", freeze="blocks.0.*+embed.weight")
    start, end = seen.at[0], trainer.model.state_dict()
    factor = decay(trainer.cfg, 8, 0, 8)
    for name in ("blocks.1.mlp.W_in.weight", "blocks.1.mlp.W_out.weight"):
        torch.testing.assert_close(end[name], start[name] * factor, rtol=1e-6, atol=1e-9)
    assert torch.equal(end["blocks.1.mlp.W_in.bias"], start["blocks.1.mlp.W_in.bias"])
    frozen = [k for k in start if k.startswith("blocks.0.") or k == "embed.weight"]
    assert len(frozen) == 13  # the embedding and block 0's 12 tensors
    for name in frozen:
        assert torch.equal(end[name], start[name]), name  # bit-identical: no decay either
    assert not torch.equal(end["blocks.1.attn.qkv.weight"], start["blocks.1.attn.qkv.weight"])
    meta = json.loads((trainer.run_dir / "run.json").read_text())["train_config"]
    assert (meta["ablate"], meta["freeze"], meta["ablate_kind"]) == ("L1.mlp", "blocks.0.*,embed.weight", "zero")


def test_resume_keeps_the_intervention(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=10, eval_every=3, eval_prompts=0, ablate="L0H2", ablate_steps="2:8",
                            freeze="blocks.1.ln*", ablate_kind="mean")
    whole = start_run(replace(cfg, run_name="whole"), show_progress=False)
    assert whole.fit() == "finished"
    parted = start_run(replace(cfg, run_name="parted"), callbacks=[Interrupt(5)], show_progress=False)
    assert parted.fit() == "interrupted"
    again = start_run(TrainConfig(), resume_dir=parted.run_dir, show_progress=False)
    assert (again.cfg.ablate, again.cfg.freeze, again.cfg.ablate_steps) == ("L0H2", "blocks.1.ln*", "2:8")
    assert again.fit() == "finished"
    a, b = whole.model.state_dict(), again.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_names_and_windows_parse_in_one_place():
    assert parse_sites("L0H3+L1.mlp,L0H3") == [(0, 3), (1, None)]
    assert parse_sites("none") == parse_sites("") == []
    assert parse_steps("100:") == (100, None) and parse_steps(":50") == (0, 50) and parse_steps("") == (0, None)
    cfg = TrainConfig(preset="tiny", ablate="L1.mlp+L0H3", freeze="none")
    assert (cfg.ablate, cfg.freeze) == ("L1.mlp,L0H3", "")


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "guppy.train.trainer", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=os.environ | {"PYTHONPATH": os.getcwd()})


@pytest.mark.parametrize("args, expected", [
    (["--ablate", "L5H0"], "ablate: no site L5H0 in a model of 2 layers x 4 heads"),
    (["--ablate", "head3"], "ablate: 'head3' is not a site"),
    (["--ablate", "L0H1", "--ablate-steps", "9:3"], "ablate_steps: '9:3' is empty"),
    (["--ablate", "L0H1", "--ablate-steps", "soon"], "ablate_steps: 'soon' is not a slice"),
    (["--freeze", "blocks.7.*"], "freeze: 'blocks.7.*' matches no parameter"),
])
def test_bad_interventions_are_one_line_before_any_run_folder(tmp_path, args, expected):
    r = cli("--preset", "tiny", *args, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and expected in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


def test_a_sweep_varies_the_ablation_and_compare_shows_it(tmp_path):
    runs = plan("ko", [("ablate", ["none", "L0H3+L1.mlp"])], [], ["--preset", "tiny", "--steps", "2"], tmp_path)
    assert [r.name for r in runs] == ["ablate-none", "ablate-L0H3+L1.mlp"]
    assert runs[1].flags[runs[1].flags.index("--ablate") + 1] == "L0H3+L1.mlp"
    with pytest.raises(ValueError, match="no site L0H9"):
        plan("ko", [("ablate", ["none", "L0H9"])], [], ["--preset", "tiny"], tmp_path)
    a = train(tmp_path, run_name="intact", steps=2)
    b = train(tmp_path, run_name="knocked", steps=2, ablate="L0H3", freeze="blocks.1.mlp.*")
    cmp = compare_runs([a.run_dir, b.run_dir])
    assert cmp.settings.loc["knocked", "ablate"] == "L0H3" and cmp.settings.loc["intact", "ablate"] == ""
    assert cmp.settings.loc["knocked", "freeze"] == "blocks.1.mlp.*"


def test_freezing_every_weight_of_a_layer_leaves_the_model_trainable(tiny_cfg):
    from guppy.train.interventions import Interventions

    torch.manual_seed(0)
    model = GuppyLM(tiny_cfg)
    Interventions(model, TrainConfig(preset="tiny", freeze="blocks.*.attn.*"), pad_id=0)
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks.0.attn.qkv.weight" not in grads and "blocks.0.mlp.W_in.weight" in grads


def test_the_page_commands_run(tmp_path):
    """docs/interventions.md's lines, on the tiny recipe (its flags after the page's win)."""
    page = (Path(__file__).parents[1] / "docs" / "interventions.md").read_text()
    lines = [line.split("  #")[0].strip() for line in page.splitlines() if line.startswith(("guppy-train ", "guppy-sweep "))]
    assert len(lines) == 5
    tiny = ["--preset", "tiny", "--persona", str(MINI), "--n-chats", "600", "--vocab-size", "400", "--steps", "2",
            "--eval-prompts", "0", "--precision", "fp32", "--device", "cpu"]
    env = os.environ | {"PYTHONPATH": os.getcwd()}
    for line in lines:
        args = shlex.split(line)
        if args[0] == "guppy-train":
            cmd = ["guppy.train.trainer", *args[1:], *tiny, "--runs-dir", str(tmp_path / "runs"), "--quiet"]
        else:  # planned and listed: every run's flags checked as guppy-train would
            cut = args.index("--")
            cmd = ["guppy.train.sweep", *args[1:cut], "--list", "--runs-dir", str(tmp_path / "runs"), "--",
                   *args[cut + 1:], *tiny]
        r = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, (line, r.stderr[-800:])
    ran = [json.loads(p.read_text())["train_config"] for p in sorted((tmp_path / "runs").glob("*/run.json"))]
    assert {(c["ablate"], c["freeze"]) for c in ran} == {("L0H3", ""), ("L0H3,L1.mlp", ""), ("L1H2", ""),
                                                        ("", "blocks.0.*,embed.weight")}
    assert r.stdout.count("guppy-train ") == 3 and "--ablate L0H3+L1.mlp" in r.stdout  # the sweep's three runs
