"""Shared fixtures."""

import os
import tempfile
from pathlib import Path

import pytest
import torch

from guppy.config import ModelConfig, TrainConfig, model_preset
from guppy.model.transformer import GuppyLM
from guppy.train.trainer import start_run


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    """The tiny preset: 2 layers, d_model 32, 4 heads of 8, d_mlp 64, n_ctx 64, d_vocab 512."""
    return model_preset("tiny")


@pytest.fixture
def tiny_model(tiny_cfg) -> GuppyLM:
    """A GuppyLM of the tiny preset, seeded, in eval mode."""
    torch.manual_seed(0)
    return GuppyLM(tiny_cfg).eval()


# ---- runs: tiny trained and recorded runs shared by the training, chat and recording tests ----

MINI = Path(__file__).parent / "data" / "mini.toml"


def pytest_configure(config):
    # tests never touch ~/.cache: one fresh data cache per test session (subprocesses inherit it)
    os.environ.setdefault("GUPPY_CACHE_DIR", tempfile.mkdtemp(prefix="guppy-test-cache-"))
    # transformers, TransformerLens and nnsight load only folders the tests write: a hub call is a bug, and
    # offline it fails at once instead of retrying for a minute
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_train_config(tmp_path, **overrides) -> TrainConfig:
    """The debug recipe every training test starts from: tiny model, 3-topic persona, fp32 CPU."""
    base = dict(preset="tiny", persona=str(MINI), n_chats=600, vocab_size=400, batch_size=16, lr=3e-3,
                warmup_steps=2, min_lr=3e-4, eval_chats=32, eval_prompts=1, log_every=5, steps=20,
                runs_dir=str(tmp_path / "runs"), device="cpu", precision="fp32")
    return TrainConfig(**base | overrides)


@pytest.fixture
def tiny_cli_args():
    """guppy-train flags for the same recipe, for tests that run the command itself."""
    def make(tmp_path, steps: int) -> list[str]:
        cfg = tiny_train_config(tmp_path, steps=steps)
        return ["--preset", cfg.preset, "--persona", cfg.persona, "--n-chats", str(cfg.n_chats),
                "--vocab-size", str(cfg.vocab_size), "--steps", str(steps), "--batch-size", str(cfg.batch_size),
                "--eval-prompts", "0", "--log-every", "5", "--precision", "fp32"]
    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_run")
    trainer = start_run(tiny_train_config(tmp, steps=60, run_name="tiny"), show_progress=False)
    assert trainer.fit() == "finished"
    return trainer.run_dir


@pytest.fixture(scope="session")
def tiny_recorded_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_recorded_run")
    cfg = tiny_train_config(tmp, steps=40, run_name="recorded", record=True, record_inputs=6, eval_every=20)
    trainer = start_run(cfg, show_progress=False)
    assert trainer.fit() == "finished"
    return trainer.run_dir


# ---- a tiny sweep (guppy-sweep itself: 2 learning rates x 2 seeds), for the compare and dashboard tests


def tiny_sweep_flags(steps: int = 20) -> list[str]:
    """guppy-train flags of the debug recipe, recorded, as the base of a guppy-sweep (after --)."""
    return ["--preset", "tiny", "--persona", str(MINI), "--n-chats", "600", "--vocab-size", "400",
            "--steps", str(steps), "--batch-size", "16", "--eval-prompts", "1", "--log-every", "5",
            "--precision", "fp32", "--device", "cpu", "--record-inputs", "6"]


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    from guppy.train.sweep import main

    runs = tmp_path_factory.mktemp("tiny_sweep") / "runs"
    code = main(["--name", "lr", "--vary", "lr=3e-3,1e-3", "--seeds", "0,1", "--parallel", "2",
                 "--runs-dir", str(runs), "--", *tiny_sweep_flags()])
    assert code == 0
    return runs / "lr"


@pytest.fixture(scope="session")
def wide_short_run(tmp_path_factory) -> Path:
    """A run of another shape (the small preset: 4 layers x 8 heads) that trains half as long as
    the sweep's runs, with another batch size: what compare_runs and compare mode must line up."""
    cfg = tiny_train_config(tmp_path_factory.mktemp("wide"), preset="small", steps=10, batch_size=8, run_name="wide",
                            record=True, record_inputs=4, eval_prompts=0, eval_every=5)
    trainer = start_run(cfg, show_progress=False)
    assert trainer.fit() == "finished"
    return trainer.run_dir


@pytest.fixture(scope="session")
def tiny_sae_run(tiny_recorded_run, tmp_path_factory) -> Path:
    """A copy of the tiny recorded run with small SAEs (guppy-sae) on blocks.0.hook_resid_post at every snapshot."""
    import shutil

    from guppy.features.cli import main

    run = tmp_path_factory.mktemp("sae") / "featured"
    shutil.copytree(tiny_recorded_run, run)
    assert main([str(run), "--hook", "blocks.0.hook_resid_post", *TINY_SAE_FLAGS]) == 0
    return run


TINY_SAE_FLAGS = ["--tokens", "1500", "--first-steps", "60", "--warm-steps", "20", "--heldout", "30", "--width", "96",
                  "--k", "8", "--threads", "1", "--quiet"]


def assert_resid_views_agree(ours, theirs) -> None:
    """Our ActivationCache and a TransformerLens cache (3.x HookedTransformer or 4.x bridge) on the same
    tokens: the accumulated residual at every layer (mid points too) and the logit lens agree."""
    for layer in (0, 1, 2, None):
        a, labels = ours.accumulated_resid(layer, incl_mid=True, return_labels=True)
        b, tl_labels = theirs.accumulated_resid(layer, incl_mid=True, return_labels=True)
        assert len(labels) == len(tl_labels)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.accumulated_resid(apply_ln=True), theirs.accumulated_resid(apply_ln=True),
                               atol=1e-5, rtol=1e-5)  # the logit lens
