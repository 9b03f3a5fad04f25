"""GuppyLM checkpoints in: files written here in GuppyLM's formats (tests/guppylm_files.py) are
imported and checked against a forward written from its state-dict layout; the imported run in
guppy-chat, guppy-eval, a probe script and the dashboard; post-hoc recording; bad files as one line."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from guppylm_files import (  # noqa: F401
    MINI,
    MINI_DATA,
    ROOT,
    TINY,
    guppylm_forward,
    guppylm_state,
    hub_layout,
    series_run,
    tokens,
    training_layout,
)

import guppy
from guppy.bridges.guppylm_format import GuppyLMConfig
from guppy.bridges.guppylm_import import import_guppylm
from guppy.bridges.guppylm_import import main as import_main
from guppy.config import ModelConfig
from guppy.run.reader import load_for_inference

# ---- import ---------------------------------------------------------------------------------


def test_series_import_gives_guppylms_logits_at_every_step(series_run):
    run, states = series_run
    assert list(guppy.open_run(run).path.joinpath("checkpoints").iterdir())
    from guppy.run.format import list_checkpoints

    assert list(list_checkpoints(run)) == [2, 4, 6, 7]  # best_model.pt repeats step 4; final_model.pt is step 7
    x = tokens(3, 20, TINY["vocab_size"])
    opened = guppy.open_run(run)
    assert opened.checkpoint_steps == [2, 4, 6, 7]
    for step, sd in states.items():
        model, _, _ = load_for_inference(run, step)
        torch.testing.assert_close(model(x), guppylm_forward(sd, TINY, x), atol=1e-5, rtol=1e-5)
        # the run API loads any checkpoint step, with or without snapshots (guppy-record comes later)
        torch.testing.assert_close(opened.model(step)(x), model(x))
    with pytest.raises(guppy.RunError, match="no checkpoint 5; have steps 2, 4, 6, 7"):
        opened.model(5)
    m = guppy.open_run(run).metrics
    assert m.loss.notna().sum() == 1 and m.step.max() == 7  # 7 per-step losses: one row (steps 1-7)
    assert m.loc[m.eval_loss.notna(), "step"].tolist() == [4]  # best_model.pt's eval_loss at its step
    assert json.loads((run / "run.json").read_text())["status"] == "imported"


def test_best_model_between_saves_counts_and_the_repository_root_opens(tmp_path):
    from guppy.run.format import list_checkpoints

    states = training_layout(tmp_path / "g", steps=(2, 4), final=5)
    states[3] = guppylm_state(TINY, 3)  # evaluated at step 3, between two saves
    torch.save({"step": 3, "model_state_dict": states[3], "config": dict(TINY), "eval_loss": 2.0},
               tmp_path / "g" / "checkpoints" / "best_model.pt")
    run = import_guppylm(tmp_path / "g", tmp_path / "runs" / "r", data=MINI_DATA)  # the root: checkpoints/ inside
    assert list(list_checkpoints(run)) == [2, 3, 4, 5]
    x = tokens(2, 10, TINY["vocab_size"])
    model, _, _ = load_for_inference(run, 3)
    torch.testing.assert_close(model(x), guppylm_forward(states[3], TINY, x), atol=1e-5, rtol=1e-5)


def test_cli_import_of_a_bare_state_dict_with_extra_buffers(tmp_path, capsys):
    sd = hub_layout(tmp_path / "g", TINY)
    sd = {"_orig_mod." + k: v for k, v in sd.items()} | {"_orig_mod.blocks.0.attn.mask": torch.ones(4, 4)}
    torch.save(sd, tmp_path / "g" / "checkpoints" / "pytorch_model.bin")  # torch.compile'd, with a mask buffer
    (tmp_path / "g" / "checkpoints" / "best_model.pt").unlink()
    assert import_main([str(tmp_path / "g"), "--runs-dir", str(tmp_path / "runs"), "--name", "hub", "--step", "1000",
                        "--persona", str(MINI), "--n-chats", "600", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("imported 1 checkpoint (steps 1000..1000) into") and "guppy-record" in out
    assert "ignored blocks.0.attn.mask" in err
    meta = json.loads((tmp_path / "runs" / "hub" / "run.json").read_text())
    assert meta["source"]["ignored_keys"] == ["blocks.0.attn.mask"] and meta["data_config"]["n_chats"] == 600
    assert not (tmp_path / "runs" / "hub" / "metrics.csv").exists()


def test_imported_tokenizer_encodes_prompts_as_guppylm_does(series_run):
    from tokenizers import Tokenizer

    run, _ = series_run
    tok = guppy.open_run(run).tokenizer
    raw = Tokenizer.from_file(str(run / "tokenizer.json"))  # GuppyLM's own use: specials parsed from the string
    for prompt in ("Hi Guppy", "what is the meaning of life?"):
        text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        assert tok.encode_prompt(prompt) == raw.encode(text).ids
    assert (tok.pad_id, tok.start_id, tok.end_id) == (0, 1, 2) and tok.format.pad == "<pad>"
    assert tok.decode(tok.encode("Hi Guppy")) == "Hi Guppy"  # case kept: no lowercasing normalizer
    assert tok.encode_prompt("<|im_end|> sneaky").count(2) == 1  # a typed special stays text


def test_published_model_shapes_import(tmp_path):
    """The published 8.7M fish: hub config.json, bare state dict, the download step's layout."""
    cfg = GuppyLMConfig().to_dict()
    sd = hub_layout(tmp_path / "g", cfg)
    run = import_guppylm(tmp_path / "g" / "checkpoints", tmp_path / "runs" / "published", data=MINI_DATA)
    model, _, path = load_for_inference(run)
    assert path.name == "step-000000.safetensors" and model.num_params() == 8_726_016
    assert model.cfg == ModelConfig(dropout=0.1)  # our guppy preset
    x = tokens(2, 24, 4096)
    torch.testing.assert_close(model(x), guppylm_forward(sd, cfg, x), atol=1e-4, rtol=1e-4)


def one_line_error(capsys, argv) -> str:
    assert import_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("guppy-import: error: ") and err.count("\n") == 1, err
    return err


def test_bad_files_are_one_line_and_leave_no_run(tmp_path, capsys):
    good = tmp_path / "good"
    training_layout(good, steps=(2,), final=3)
    runs = tmp_path / "runs"
    base = ["--runs-dir", str(runs), "--name", "x", "--quiet"]

    sd = guppylm_state(TINY, 1)
    del sd["blocks.1.ffn.up.bias"]
    torch.save({"step": 1, "model_state_dict": sd, "config": dict(TINY)}, tmp_path / "missing.pt")
    err = one_line_error(capsys, [str(tmp_path / "missing.pt"), "--tokenizer", str(good / "data/tokenizer.json"), *base])
    assert "missing key blocks.1.ffn.up.bias" in err

    torch.save({"step": 1, "model_state_dict": guppylm_state(TINY, 1), "config": dict(TINY, ffn_hidden=128)},
               tmp_path / "shape.pt")
    err = one_line_error(capsys, [str(tmp_path / "shape.pt"), "--tokenizer", str(good / "data/tokenizer.json"), *base])
    assert "blocks.0.ffn.up.weight has shape (64, 32)" in err and "(128, 32)" in err

    untied = guppylm_state(TINY, 1)
    untied["lm_head.weight"] = untied["tok_emb.weight"] + 1
    torch.save({"step": 1, "model_state_dict": untied, "config": dict(TINY)}, tmp_path / "untied.pt")
    err = one_line_error(capsys, [str(tmp_path / "untied.pt"), "--tokenizer", str(good / "data/tokenizer.json"), *base])
    assert "lm_head.weight differs from tok_emb.weight" in err

    # a pickle that needs code to load (an argparse.Namespace) is refused, never unpickled
    torch.save({"step": 1, "model_state_dict": guppylm_state(TINY, 1), "config": argparse.Namespace(**TINY)},
               tmp_path / "code.pt")
    err = one_line_error(capsys, [str(tmp_path / "code.pt"), "--tokenizer", str(good / "data/tokenizer.json"), *base])
    assert "refused" in err and "weights_only" in err

    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert "not a readable PyTorch checkpoint" in one_line_error(capsys, [str(tmp_path / "text.pt"), *base])

    (tmp_path / "bare").mkdir()
    torch.save(guppylm_state(TINY, 1), tmp_path / "bare" / "pytorch_model.bin")
    err = one_line_error(capsys, [str(tmp_path / "bare"), "--tokenizer", str(good / "data/tokenizer.json"), *base])
    assert "no config.json beside it; pass --config" in err
    (tmp_path / "bare" / "config.json").write_text("{oops")
    assert "unreadable config" in one_line_error(capsys, [str(tmp_path / "bare"), "--tokenizer",
                                                          str(good / "data/tokenizer.json"), *base])
    (tmp_path / "bare" / "config.json").write_text(json.dumps(GuppyLMConfig(**dict(TINY, pad_id=399)).to_hub()))
    assert "pad_id = 399 is not a token" in one_line_error(capsys, [str(tmp_path / "bare"), "--tokenizer",
                                                                    str(good / "data/tokenizer.json"), *base])

    # a series whose later file is broken: nothing is left behind
    (good / "checkpoints" / "step_9.pt").write_bytes(b"PK\x03\x04 truncated")
    err = one_line_error(capsys, [str(good / "checkpoints"), *base])
    assert "step_9.pt" in err and not (runs / "x").exists()


def test_record_and_export_errors_are_one_line(tmp_path, capsys):
    from guppy.bridges.export import main as export_main
    from guppy.record.posthoc import main as record_main

    assert record_main([str(tmp_path / "nope"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("guppy-record: error:") and "no such file" in err and err.count("\n") == 1
    assert export_main([str(tmp_path / "nope"), "--to", "guppylm", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("guppy-export: error:") and "no such run folder" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_no_tokenizer_found_names_the_flag(tmp_path, capsys):
    (tmp_path / "lone").mkdir()
    torch.save({"step": 3, "model_state_dict": guppylm_state(TINY, 3), "config": dict(TINY)}, tmp_path / "lone" / "a.pt")
    err = one_line_error(capsys, [str(tmp_path / "lone" / "a.pt"), "--runs-dir", str(tmp_path / "runs")])
    assert "no tokenizer.json beside" in err and "pass --tokenizer" in err


# ---- an imported run in every tool ----------------------------------------------------------


def test_chat_and_eval_work_on_an_imported_run(series_run, capsys):
    from guppy.chat import main as chat_main
    from guppy.evaluate import main as eval_main

    run, _ = series_run
    assert chat_main(["--run", str(run), "-p", "Hi Guppy", "--temperature", "0", "--max-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("you: Hi Guppy\n")
    assert eval_main(["--run", str(run), "--prompts", "1"]) == 0
    assert "pass rate:" in capsys.readouterr().out


@pytest.fixture(scope="module")
def recorded_series(series_run):
    from guppy.record.posthoc import record_run

    run, _ = series_run
    written = record_run(run, full_inputs=4, show_progress=False)
    return run, written


def test_record_writes_a_snapshot_per_checkpoint_that_open_run_reads(recorded_series):
    run, written = recorded_series
    assert written == [2, 4, 6, 7]
    r = guppy.open_run(run)
    assert r.snapshots.step.tolist() == [2, 4, 6, 7]
    hm = r.head_metrics()
    assert set(hm.step) == {2, 4, 6, 7} and hm.value.notna().all()
    assert r.acts("blocks.0.attn.hook_pattern", snapshot=7).shape[0] == 4
    # measured from each checkpoint's own weights: later snapshots differ
    assert r.read("loss/mean", 2) != r.read("loss/mean", 7)
    # what only training knows is absent, not faked
    assert np.isnan(r.read("grads/param_norm", 4)).all() and np.isnan(r.read("params/update_ratio", 4)).all()
    assert set(r.read("absent", 4)) == {"grads/param_norm", "params/update_ratio"}
    assert np.isfinite(r.read("grads/act_norm", 4)).all()  # one backward on the fixed inputs: measured
    assert np.isnan(r.snapshots.epoch).all()  # GuppyLM's checkpoints do not say


def test_record_resumes_and_skips_what_exists(recorded_series):
    from guppy.record.posthoc import record_run

    run, _ = recorded_series
    before = (run / "snapshots" / "step-000004.h5").stat().st_mtime_ns
    (run / "snapshots" / "step-000006.h5").unlink()
    assert record_run(run, full_inputs=4, show_progress=False) == [6]
    assert (run / "snapshots" / "step-000004.h5").stat().st_mtime_ns == before
    assert record_run(run, full_inputs=4, show_progress=False) == []


def test_record_of_a_guppy_run_trained_without_record(tiny_run, tmp_path):
    import shutil

    from guppy.record.posthoc import record_run

    run = tmp_path / "plain"
    shutil.copytree(tiny_run, run)
    steps = record_run(run, full_inputs=4, show_progress=False)
    r = guppy.open_run(run)
    assert steps and r.snapshots.step.tolist() == steps
    assert r.snapshots.tokens.notna().all()  # guppy's own checkpoints fall on logged steps


def test_a_probe_script_runs_on_an_imported_run(recorded_series, capsys):
    import importlib.util

    run, _ = recorded_series
    spec = importlib.util.spec_from_file_location("probe_logit_lens", ROOT / "probes" / "logit_lens.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--run", str(run), "--snapshot", "all", "--chats", "4"]) == 0
    assert (run / "probes" / "logit_lens.html").exists()


def test_dashboard_replays_an_imported_series(recorded_series, tmp_path, monkeypatch):
    import shutil

    from streamlit.testing.v1 import AppTest

    run, _ = recorded_series
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "guppylm")
    monkeypatch.setenv("GUPPY_RUNS_DIR", str(runs))
    for view in ("Run overview", "Attention", "Head metrics", "Residual stream", "Gradients", "Ablation"):
        at = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=120)
        at.query_params["run"], at.query_params["view"] = "guppylm", view
        at.run()
        assert not at.exception, (view, [e.value for e in at.exception])
        assert not at.error, (view, [e.value for e in at.error])
        assert at.get("plotly_chart") or view == "Ablation", view
        if view == "Gradients":  # says why the training-gradient charts are empty
            assert any("guppy-record" in i.value for i in at.info)
