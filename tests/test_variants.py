"""Every architectural flag: what it builds, checked against independent implementations; both
attention paths and the KV cache for each variant; each flag trains, records and generates;
bad combinations are one line before any run folder; old runs load as they were."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_train_config
from safetensors.torch import load_file, safe_open, save_file

from guppy.config import TrainConfig, model_config
from guppy.model.ablate import ablate, each_head_ablated
from guppy.model.generate import generate
from guppy.model.positional import sinusoids
from guppy.model.transformer import BLOCK_ORDER, GuppyLM
from guppy.run import format as R
from guppy.run.format import list_checkpoints
from guppy.run.reader import load_for_inference, open_run
from guppy.train.trainer import main as train_main
from guppy.train.trainer import start_run

# ModelConfig changes over the tiny preset; init_std 0.2 makes attention sharp enough that a
# position bug moves the numbers well past the tolerances
MODEL_VARIANTS = {
    "learned": dict(), "sinusoidal": dict(positional="sinusoidal"), "rotary": dict(positional="rotary"),
    "sinusoidal-scaled": dict(positional="sinusoidal", embed_scale=32 ** 0.5),
    "none": dict(positional="none"), "post-ln": dict(norm="post"), "gelu": dict(act="gelu"),
    "rotary-post-gelu": dict(positional="rotary", norm="post", act="gelu"),
}


@pytest.fixture(params=list(MODEL_VARIANTS), ids=list(MODEL_VARIANTS))
def variant_model(request, tiny_cfg) -> GuppyLM:
    torch.manual_seed(0)
    return GuppyLM(tiny_cfg.replace(init_std=0.2, **MODEL_VARIANTS[request.param])).eval()


# ---- the variants themselves, against independent implementations -------------------------------


def test_sinusoids_are_the_2017_table():
    table = sinusoids(50, 12)
    for p in (0, 1, 7, 49):
        for i in range(6):
            angle = p / 10_000 ** (2 * i / 12)
            assert math.isclose(table[p, 2 * i], math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[p, 2 * i + 1], math.cos(angle), abs_tol=1e-6)
    assert sinusoids(8, 5).shape == (8, 5)  # an odd width drops the last cosine


def test_sinusoidal_runs_scale_their_embeddings_by_sqrt_d_model_and_old_runs_stay_as_they_were(tiny_cfg):
    cfg = TrainConfig(preset="tiny", positional="sinusoidal")
    assert model_config(cfg).embed_scale == math.sqrt(tiny_cfg.d_model)  # the 2017 paper's scale
    assert model_config(TrainConfig(preset="tiny")).embed_scale == 1.0  # a learned table: as before
    assert model_config(TrainConfig(preset="tiny", positional="sinusoidal", embed_scale=1.0)).embed_scale == 1.0
    before = cfg.to_dict()
    del before["embed_scale"]  # a run.json written before the field: it trained unscaled
    assert model_config(TrainConfig.from_dict(before)).embed_scale == 1.0
    old_model = model_config(cfg).to_dict()
    del old_model["embed_scale"]
    assert type(tiny_cfg).from_dict(old_model).embed_scale == 1.0

    torch.manual_seed(0)
    model = GuppyLM(tiny_cfg.replace(positional="sinusoidal", embed_scale=4.0)).eval()
    tokens = torch.randint(0, 512, (2, 9))
    _, cache = model.run_with_cache(tokens, names=["hook_embed", "blocks.0.hook_resid_pre"])
    torch.testing.assert_close(cache["hook_embed"], 4.0 * model.W_E[tokens])
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], 4.0 * model.W_E[tokens] + sinusoids(9, 32))


def test_rotary_turns_q_and_k_by_their_position(tiny_cfg):
    """hook_rot_q against complex arithmetic: pair (x_i, x_{i+E/2}) as x_i + j x_{i+E/2}, times e^{j p theta_i}."""
    torch.manual_seed(0)
    model = GuppyLM(tiny_cfg.replace(positional="rotary", init_std=0.2)).eval()
    tokens = torch.randint(0, 512, (2, 10))
    _, cache = model.run_with_cache(tokens, names="blocks.0.attn.hook_*")
    E = tiny_cfg.d_head
    theta = 10_000 ** (-torch.arange(E // 2, dtype=torch.float64) / (E // 2))
    angle = torch.arange(10, dtype=torch.float64)[:, None] * theta  # (T, E/2)
    turn = torch.polar(torch.ones_like(angle), angle)
    for raw, rot in (("hook_q", "hook_rot_q"), ("hook_k", "hook_rot_k")):
        x = cache[f"blocks.0.attn.{raw}"].double()  # (B, T, H, E)
        z = torch.complex(x[..., :E // 2], x[..., E // 2:]) * turn[None, :, None]
        torch.testing.assert_close(cache[f"blocks.0.attn.{rot}"].double(), torch.cat([z.real, z.imag], -1),
                                   atol=1e-6, rtol=1e-6)
    # so a query and a key score by their offset alone: the same pair moved 5 later scores the same
    q, k = cache["blocks.0.attn.hook_q"][0, :1], cache["blocks.0.attn.hook_k"][0, :1]  # (1, H, E)
    rotary = model.blocks[0].attn.rotary
    near = (rotary(q[None], 3) * rotary(k[None], 1)).sum(-1)
    far = (rotary(q[None], 8) * rotary(k[None], 6)).sum(-1)
    torch.testing.assert_close(near, far, atol=1e-5, rtol=1e-5)


def test_post_ln_normalizes_after_each_residual_add(tiny_cfg):
    torch.manual_seed(0)
    model = GuppyLM(tiny_cfg.replace(norm="post", init_std=0.2)).eval()
    _, cache = model.run_with_cache(torch.randint(0, 512, (2, 7)))
    for l, block in enumerate(model.blocks):
        c = {n: cache[f"blocks.{l}.{n}"] for n in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid",
                                                   "hook_mlp_out", "hook_resid_post")}
        mid = F.layer_norm(c["hook_resid_pre"] + c["hook_attn_out"], (32,), block.ln1.w, block.ln1.b, 1e-5)
        post = F.layer_norm(c["hook_resid_mid"] + c["hook_mlp_out"], (32,), block.ln2.w, block.ln2.b, 1e-5)
        torch.testing.assert_close(c["hook_resid_mid"], mid, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c["hook_resid_post"], post, atol=1e-5, rtol=1e-5)


def test_each_variant_keeps_every_hook_that_applies(variant_model):
    cfg, names = variant_model.cfg, set(variant_model.hook_names)
    expected = {f"blocks.{l}.{n}" for l in range(cfg.n_layers) for n in BLOCK_ORDER}
    expected |= {"hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized", "hook_logits"}
    if cfg.positional != "rotary":
        expected -= {n for n in expected if "hook_rot_" in n}
    if cfg.positional in ("rotary", "none"):  # no table added to the embeddings
        expected.remove("hook_pos_embed")
    assert names == expected
    _, cache = variant_model.run_with_cache(torch.randint(0, 512, (1, 5)))
    assert set(cache) == names  # and each fires


def test_only_the_learned_table_is_a_parameter(tiny_cfg):
    for positional, has_table in (("learned", True), ("sinusoidal", False), ("rotary", False), ("none", False)):
        model = GuppyLM(tiny_cfg.replace(positional=positional))
        assert ("W_pos" in model.state_dict()) == has_table
        assert model.num_params() == model.cfg.num_params()


# ---- both attention paths, the KV cache, generation and ablation for each variant -------------


def test_explicit_attention_path_equals_sdpa(variant_model):
    tokens = torch.randint(0, 512, (3, 20))
    fused = variant_model(tokens)
    explicit, _ = variant_model.run_with_cache(tokens, names="blocks.*.attn.hook_pattern")
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    variant_model.train()  # CPU training takes the explicit path; under no_grad the fused one
    with torch.no_grad():
        fused_train = variant_model(tokens)
    torch.testing.assert_close(variant_model(tokens), fused_train, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hooked", [False, True], ids=["sdpa", "explicit"])
def test_kv_cache_continuation_equals_one_full_forward(variant_model, hooked):
    tokens = torch.randint(0, 512, (2, 20))
    hooks = [("blocks.*.attn.hook_pattern", lambda x, hook: None)] if hooked else []
    with variant_model.hooks(fwd_hooks=hooks):
        full = variant_model(tokens)
        first, kv = variant_model(tokens[:, :8], return_kv=True)
        chunk, kv = variant_model(tokens[:, 8:15], past_kv=kv, return_kv=True)
        steps = [variant_model(tokens[:, t:t + 1], past_kv=kv, return_kv=True)[0] for t in range(15, 20)]
    torch.testing.assert_close(torch.cat([first, chunk, *steps], 1), full, atol=1e-5, rtol=1e-5)


def test_generation_with_the_cache_equals_full_recomputation(variant_model):
    prompt = torch.randint(0, 512, (12,)).tolist()
    # 60 new tokens run past n_ctx=64, where generation slides its window without the cache
    cached = generate(variant_model, prompt, max_new_tokens=60, temperature=0)
    assert cached == generate(variant_model, prompt, max_new_tokens=60, temperature=0, use_kv_cache=False)


def test_batched_head_ablation_equals_ablating_one_head(variant_model):
    tokens = torch.randint(0, 512, (2, 9))
    batched = each_head_ablated(variant_model, tokens)  # (L*H, B, T, V)
    with ablate(variant_model, heads=[(1, 2)]):
        one = variant_model(tokens)
    torch.testing.assert_close(batched[variant_model.cfg.n_heads + 2], one, atol=1e-5, rtol=1e-5)


# ---- each flag trains a tiny model, records, and generates from its checkpoint -----------------

TRAIN_FLAGS = {  # every flag at least once
    "sinusoidal-gelu": dict(positional="sinusoidal", act="gelu"),
    "rotary": dict(positional="rotary"),
    "none-post": dict(positional="none", norm="post"),
    "shape-init": dict(n_layers=1, d_model=48, n_heads=2, d_mlp=80, n_ctx=32, init_std=0.05),
}


@pytest.mark.parametrize("flags", list(TRAIN_FLAGS.values()), ids=list(TRAIN_FLAGS))
def test_each_flag_trains_records_and_generates(tmp_path, flags):
    cfg = tiny_train_config(tmp_path, steps=3, run_name="v", record=True, record_inputs=3, **flags)
    trainer = start_run(cfg, show_progress=False)
    assert trainer.fit() == "finished"
    run = open_run(trainer.run_dir)
    assert run.model_config == model_config(cfg) == trainer.model.cfg
    for name, value in flags.items():  # stored in run.json as given
        assert getattr(run.model_config, name) == value
    assert run.model_config.d_head == run.model_config.d_model // run.model_config.n_heads
    L, H = run.model_config.n_layers, run.model_config.n_heads
    assert list(run.snapshots.step) == [0, 1, 2, 3]
    assert run.read(R.head_key("entropy"), 3).shape == (L, H)
    resumed = start_run(cfg, show_progress=False, resume_dir=trainer.run_dir)  # rebuilt from run.json alone
    assert resumed.model.cfg == run.model_config and resumed.step == 3
    model, tok, _ = load_for_inference(trainer.run_dir)
    prompt = tok.encode_prompt("hello pebble")
    assert generate(model, prompt, 20, temperature=0) == generate(model, prompt, 20, temperature=0, use_kv_cache=False)


def test_every_dashboard_view_renders_a_variant_run(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest
    from test_dashboard import APP, VIEWS

    flags = dict(positional="rotary", norm="post", act="gelu", n_layers=3, n_heads=2)
    trainer = start_run(tiny_train_config(tmp_path, steps=4, run_name="v", record=True, record_inputs=3,
                                          eval_prompts=0, **flags), show_progress=False)
    assert trainer.fit() == "finished"
    monkeypatch.setenv("GUPPY_RUNS_DIR", str(trainer.run_dir.parent))
    for view in VIEWS:
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params["run"], at.query_params["view"] = "v", view
        at.run()
        assert not at.exception and not at.error, (view, [e.value for e in [*at.exception, *at.error]])
        assert at.get("plotly_chart"), view


# ---- bad combinations: one line, exit 1, no run folder ------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--positional", "rotary", "--n-heads", "4", "--d-head", "7"], "d_head 7 must be even"),
    (["--d-model", "64", "--n-heads", "2", "--d-head", "16"], "d_model: 64 is not n_heads \\* d_head"),
    (["--d-model", "30", "--n-heads", "4"], "does not split into 4 heads"),
    (["--d-head", "24"], "d_head: 24 does not divide d_model 32"),
    (["--n-ctx", "8"], "n_ctx: bad value 8"),
    (["--init-std", "-1"], "init_std: bad value -1"),
])
def test_bad_combinations_are_one_line_before_any_run_folder(tmp_path, capsys, flags, message):
    runs = tmp_path / "runs"
    code = train_main(["--preset", "tiny", "--runs-dir", str(runs), "--quiet", *flags])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("guppy-train: error: "), err
    assert re.search(message, err), err
    assert not runs.exists()


# ---- runs written before these flags existed --------------------------------------------------

NEW_MODEL_KEYS = ("positional", "norm", "act")
NEW_TRAIN_KEYS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "positional", "norm", "act", "init_std")


def test_an_old_run_without_the_new_fields_loads_as_it_was(tmp_path):
    trainer = start_run(tiny_train_config(tmp_path, steps=2, run_name="old", eval_prompts=0), show_progress=False)
    assert trainer.fit() == "finished"
    run_dir = trainer.run_dir
    meta = json.loads((run_dir / "run.json").read_text())  # strip what the old code did not write
    for key in NEW_MODEL_KEYS:
        del meta["model_config"][key]
    for key in NEW_TRAIN_KEYS:
        del meta["train_config"][key]
    (run_dir / "run.json").write_text(json.dumps(meta))
    for path in list_checkpoints(run_dir).values():
        with safe_open(str(path), framework="pt") as f:
            file_meta = f.metadata()
        old_cfg = {k: v for k, v in json.loads(file_meta["model_config"]).items() if k not in NEW_MODEL_KEYS}
        save_file(load_file(str(path)), str(path), metadata=file_meta | {"model_config": json.dumps(old_cfg)})
    run = open_run(run_dir)
    assert (run.model_config.positional, run.model_config.norm, run.model_config.act) == ("learned", "pre", "relu")
    assert run.config == TrainConfig.from_dict(meta["train_config"])
    model, _, _ = load_for_inference(run_dir)
    tokens = torch.randint(0, 400, (1, 9))
    torch.testing.assert_close(model(tokens), trainer.model.eval()(tokens))


def test_readme_lists_every_architecture_flag_and_its_example_holds():
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "model.md").read_text()
    section = page.split("## Changing the architecture")[1].split("\n## ")[0]
    for name in NEW_TRAIN_KEYS:
        assert f"--{name.replace('_', '-')}" in section, name
    (example,) = re.findall(r"^guppy-train (.*?)\s+#", section, re.M)
    from guppy.train.trainer import build_parser

    given = {k: v for k, v in vars(build_parser().parse_args(example.split())).items()
             if v is not None and k not in ("resume", "quiet", "dist_backend")}
    cfg = model_config(TrainConfig(**given))
    assert (cfg.n_heads, cfg.d_head, cfg.positional, cfg.act) == (1, 256, "rotary", "gelu")
