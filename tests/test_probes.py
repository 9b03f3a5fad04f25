"""The probes in probes/: known answers on a model trained here to copy, exact identities
(attribution sums to the logit, patching everything recovers everything), and every script
run end to end on the suite's tiny recorded run."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from guppy.analysis import attribution
from guppy.analysis import logit_lens as lens
from guppy.analysis import probe_runner as A
from guppy.analysis.heldout import ChatBatch, each_site_losses
from guppy.analysis.linear_probe import probe_predict, train_linear_probe, train_linear_probes
from guppy.config import ModelConfig
from guppy.model.ablate import ablate, ablation_sites
from guppy.model.transformer import GuppyLM
from guppy.record import head_scores as M

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("ablate_heads", "head_types", "logit_lens", "attribution", "patching", "topic_probe")


def load_probe(name: str):
    spec = importlib.util.spec_from_file_location(f"probe_{name}", ROOT / "probes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- a model that learned to copy: sequences of random tokens, repeated ----------------------

COPY_CFG = ModelConfig(d_vocab=64, n_ctx=32, d_model=64, n_layers=2, n_heads=4, d_head=16, d_mlp=128, dropout=0.0)


def repeated(n: int, gen: torch.Generator, period: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """[BOS=0, r, r]: `period` random tokens, repeated once -> (tokens (n, 2 * period + 1), period (n,)).
    With one fixed period a 2-layer model learns to copy within a few hundred steps, through
    heads that attend `period - 1` back (what the induction score measures); a varied period
    would force the two-layer content-based circuit, which takes thousands of steps."""
    r = torch.randint(1, COPY_CFG.d_vocab, (n, period), generator=gen)
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), r, r], 1), torch.full((n,), period)


@pytest.fixture(scope="module")
def copy_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only spins, badly on a busy machine
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = GuppyLM(COPY_CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):
        tokens, _ = repeated(64, gen)
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, COPY_CFG.d_vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def copy_batch():
    tokens, period = repeated(48, torch.Generator().manual_seed(1))
    lengths = 2 * period + 1
    second_half = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    for i, p in enumerate(period.tolist()):
        second_half[i, p + 1:2 * p] = True  # targets 2..p of the second copy: predictable by copying
    return tokens, lengths, period, second_half


@torch.no_grad()
def test_head_types_finds_an_induction_head_and_ablating_it_hurts_copying(copy_model, copy_batch):
    tokens, lengths, period, second_half = copy_batch
    table = load_probe("head_types").classify(copy_model, tokens, lengths, period)
    induction = table[table.type == "induction"]
    assert len(induction) >= 1, table
    best = induction.sort_values("induction").iloc[-1]
    layer, head = int(best["layer"]), int(best["head"])
    base = float(M.mean_loss_per_row(copy_model(tokens), tokens, second_half).mean())
    assert base < 0.5  # it did learn to copy
    with ablate(copy_model, heads=[(layer, head)], method="mean", reference=tokens):
        ablated = float(M.mean_loss_per_row(copy_model(tokens), tokens, second_half).mean())
    assert ablated > base + 0.5
    # the batched each-site ablation agrees, and puts this head in the more important half
    losses = each_site_losses(copy_model, tokens, second_half, "mean")
    sites = ablation_sites(COPY_CFG)
    assert float(losses[sites.index(("head", layer, head))]) == pytest.approx(ablated, abs=1e-4)
    heads_only = losses[:COPY_CFG.n_layers * COPY_CFG.n_heads]
    assert sites.index(("head", layer, head)) in heads_only.topk(COPY_CFG.n_heads).indices.tolist()


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_batched_site_ablation_matches_one_at_a_time(tiny_model, method):
    tokens = torch.randint(3, 512, (3, 9))
    tokens[0, 6:] = 0  # some padding
    mask = torch.ones(3, 8, dtype=torch.bool)
    reference = tokens.roll(1, 0)
    got = each_site_losses(tiny_model, tokens, mask, method, reference=reference, pad_id=0, max_logits=3 * 9 * 512 * 3)
    for i, (kind, l, h) in enumerate(ablation_sites(tiny_model.cfg)):
        with ablate(tiny_model, heads=[(l, h)] if kind == "head" else [], mlps=[l] if kind == "mlp" else [],
                    method=method, reference=reference, pad_id=0):
            want = M.mean_loss_per_row(tiny_model(tokens), tokens, mask).mean()
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)


# ---- exact identities -------------------------------------------------------------------------


@pytest.mark.parametrize("centered", [False, True])
def test_attribution_terms_sum_to_the_logit(tiny_model, centered):
    tokens = torch.randint(3, 512, (4, 12))
    positions, targets = torch.tensor([11, 5, 0, 7]), torch.tensor([3, 100, 7, 511])
    terms, labels, bias, logit = attribution.attribute(tiny_model, tokens, positions, targets, centered=centered)
    assert terms.shape == (4, 2 + 2 * (4 + 2)) and labels[2] == "L0H0" and labels[-1] == "L1 MLP"
    want = tiny_model(tokens)[torch.arange(4), positions]  # an independent forward
    want = want.gather(1, targets[:, None]).squeeze(1) - (want.mean(1) if centered else 0)
    torch.testing.assert_close(logit, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms.sum(1) + bias, want, atol=1e-4, rtol=1e-4)
    # and the components are the final residual stream
    comps, _, _, _ = attribution.components(tiny_model, tokens, positions)
    _, cache = tiny_model.run_with_cache(tokens, names="blocks.1.hook_resid_post")
    torch.testing.assert_close(comps.sum(1), cache["blocks.1.hook_resid_post"][torch.arange(4), positions],
                               atol=1e-5, rtol=1e-5)


def test_attribution_of_one_token_over_another_at_several_positions_of_one_forward(tiny_model):
    tokens = torch.randint(3, 512, (1, 12))
    positions, targets, others = torch.tensor([2, 7, 11]), torch.tensor([3, 100, 7]), torch.tensor([9, 9, 400])
    rows = torch.zeros(3, dtype=torch.long)  # three positions of the one sequence
    logits, cache = tiny_model.run_with_cache(tokens, names=attribution.attribution_hooks(tiny_model))
    terms, _, bias, diff = attribution.logit_attribution(tiny_model, cache, logits, positions, targets, rows, baseline=others)
    want = tiny_model(tokens)[0, positions]  # an independent forward
    want = want.gather(1, targets[:, None]).squeeze(1) - want.gather(1, others[:, None]).squeeze(1)
    torch.testing.assert_close(diff, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms.sum(1) + bias, want, atol=1e-4, rtol=1e-4)
    # the same as one row per position, each its own forward
    raw, *_ = attribution.logit_attribution(tiny_model, cache, logits, positions, targets, rows)
    each, *_ = attribution.attribute(tiny_model, tokens.expand(3, -1), positions, targets)
    torch.testing.assert_close(raw, each, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", ["rotary", "none"])
def test_attribution_without_a_position_table(tiny_cfg, positional):
    torch.manual_seed(0)
    model = GuppyLM(tiny_cfg.replace(positional=positional)).eval()
    tokens, positions, targets = torch.randint(3, 512, (2, 9)), torch.tensor([8, 3]), torch.tensor([5, 9])
    terms, labels, bias, logit = attribution.attribute(model, tokens, positions, targets)
    assert labels[:2] == ["embed", "L0H0"]
    torch.testing.assert_close(terms.sum(1) + bias, logit, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="needs a pre-LN model"):
        attribution.attribute(GuppyLM(tiny_cfg.replace(norm="post")), tokens, positions, targets)


def test_patching_the_whole_residual_recovers_everything(copy_model):
    patching = load_probe("patching")
    gen = torch.Generator().manual_seed(3)
    clean, corrupt = (torch.randint(1, 64, (1, 10), generator=gen) for _ in range(2))
    with torch.no_grad():
        a, b = patching.answers(copy_model(clean)[0, -1], copy_model(corrupt)[0, -1])
    by_pos, points, whole = patching.patch_resid(copy_model, clean, corrupt, a, b)
    torch.testing.assert_close(whole, torch.ones(len(points)), atol=1e-4, rtol=0)
    # the last point feeds the logits position by position: only the last position matters
    torch.testing.assert_close(by_pos[-1, -1], torch.tensor(1.0), atol=1e-4, rtol=0)
    assert by_pos[-1, :-1].abs().max() < 1e-4
    heads = patching.patch_heads(copy_model, clean, corrupt, a, b)
    assert heads.shape == (2, 4) and heads.abs().max() < 5


def test_logit_lens_at_the_last_point_is_the_model_loss(tiny_model):
    tokens = torch.randint(3, 512, (3, 10))
    mask = torch.ones(3, 9, dtype=torch.bool)
    stats, tops = lens.lens(tiny_model, tokens, mask, positions=torch.tensor([9, 4, 0]))
    with torch.no_grad():
        logits = tiny_model(tokens)
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 512), tokens[:, 1:].reshape(-1))
    assert stats[-1]["point"] == "blocks.1.hook_resid_post"
    assert stats[-1]["loss"] == pytest.approx(want.item(), abs=1e-5)
    assert tops.shape == (3, 3, 5) and tops[-1, 1, 0] == logits[1, 4].argmax()


def test_linear_probe_reads_a_planted_direction_and_the_control_does_not():
    topic_probe = load_probe("topic_probe")
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    X = torch.randn(2, 300, 16, generator=gen)
    X[1, :, :3] += 4 * torch.nn.functional.one_hot(y, 3)  # point 1 carries the label, point 0 does not
    prompts = [f"p{i // 2}" for i in range(300)]  # pairs share a prompt: the split keeps them together
    train, test = topic_probe.split_by_prompt(prompts, 0.3, seed=0)
    assert not {prompts[i] for i in train} & {prompts[i] for i in test}
    rows = topic_probe.probe_layers(X, y, train, test, 3, 1e-2, seed=0)
    assert rows[1]["test_acc"] > 0.95 and rows[0]["test_acc"] < 0.55
    assert rows[1]["control_test_acc"] < 0.55


def test_topic_features_need_only_the_prompt(tiny_model):
    topic_probe = load_probe("topic_probe")
    tokens = torch.randint(3, 512, (3, 12))
    batch = ChatBatch(tokens, torch.tensor([12, 10, 8]), torch.tensor([5, 7, 3]), ["a", "b", "a"], ["p", "q", "r"], 0)
    for position in ("last", "mean"):
        X, names = topic_probe.features(tiny_model, batch, position)
        _, cache = tiny_model.run_with_cache(tokens, names=names)  # the whole chats, replies included
        full = torch.stack([cache[n] for n in names])  # (points, B, T, D)
        want = full[:, torch.arange(3), batch.reply_start - 1] if position == "last" else \
            torch.stack([full[:, i, 1:int(batch.reply_start[i])].mean(1) for i in range(3)], 1)
        torch.testing.assert_close(X, want, atol=1e-5, rtol=1e-5)


def test_probes_fitted_together_match_probes_fitted_apart():
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(2, 90, 8, generator=gen), torch.randint(0, 3, (2, 90), generator=gen)
    X[0, :, 0] += 3 * y[0]
    together = train_linear_probes(X, y, 3, steps=100)
    for p in range(2):
        apart = train_linear_probe(X[p], y[p], 3, steps=100)
        torch.testing.assert_close(together[0][p], apart[0], atol=2e-3, rtol=2e-3)
        assert torch.equal(probe_predict(together, X)[p], probe_predict(apart, X[p]))


# ---- every script on a recorded run ---------------------------------------------------------

ARGS = {
    "ablate_heads": ["--snapshot", "all", "--chats", "6", "--eval-topics", "2", "--eval-methods", "zero,mean"],
    "head_types": ["--snapshot", "all"],
    "logit_lens": ["--snapshot", "all", "--chats", "8"],
    "attribution": ["--chats", "8"],
    "patching": [],
    "topic_probe": ["--snapshot", "all"],
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_probe_runs_on_a_recorded_run(tiny_recorded_run, name, capsys):
    assert load_probe(name).main(["--run", str(tiny_recorded_run)] + ARGS[name]) == 0
    out = Path(tiny_recorded_run) / "probes"
    csvs = sorted(out.glob(f"{name}*.csv"))
    assert csvs and all(len(pd.read_csv(c)) > 0 for c in csvs)
    html = (out / f"{name}.html").read_text()
    assert "plotly.min.js" in html and (out / "plotly.min.js").stat().st_size > 1e6
    assert not list(out.glob(".*tmp"))
    if "all" in ARGS[name]:
        assert pd.read_csv(csvs[0]).step.nunique() > 1
    assert capsys.readouterr().out.strip()


def test_ablate_heads_reports_a_pass_rate_for_the_eval_methods(tiny_recorded_run):
    # its own run of the probe (at the last snapshot only), so the test passes alone and in any order
    args = ARGS["ablate_heads"][2:]
    assert load_probe("ablate_heads").main(["--run", str(tiny_recorded_run)] + args) == 0
    df = pd.read_csv(Path(tiny_recorded_run) / "probes" / "ablate_heads.csv")
    last = df[df.step == df.step.max()]
    assert last[last.method != "resample"].pass_rate.notna().all()
    assert last[last.method == "resample"].pass_rate.isna().all()
    assert len(last) == 3 * (2 * 4 + 2)


def test_snapshot_steps_latest_all_one_or_a_list():
    from types import SimpleNamespace

    run = SimpleNamespace(snapshot_files={0: None, 10: None, 20: None, 40: None})
    assert A.snapshot_steps(run, "latest") == [40]
    assert A.snapshot_steps(run, "all") == [0, 10, 20, 40]
    assert A.snapshot_steps(run, "10") == [10]
    assert A.snapshot_steps(run, "40,0,10,10") == [0, 10, 40]  # sorted, once each
    for bad in ("15", "10,15", "10,", "x", "-10"):
        with pytest.raises(ValueError, match="one of steps 0, 10, 20, 40"):
            A.snapshot_steps(run, bad)
    assert A.snapshot_steps(run, "20", allow_all=False) == [20]
    for many in ("all", "0,10"):
        with pytest.raises(ValueError, match="not supported by this probe"):
            A.snapshot_steps(run, many, allow_all=False)


def test_bad_input_is_one_clear_line(tiny_recorded_run, tmp_path, capsys):
    assert load_probe("logit_lens").main(["--run", str(tiny_recorded_run), "--snapshot", "12345"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("logit_lens.py: error: --snapshot '12345'") and err.count("\n") == 1
    assert load_probe("attribution").main(["--run", str(tiny_recorded_run), "--snapshot", "all"]) == 1
    assert "not supported" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, str(ROOT / "probes" / "head_types.py"), "--run", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and proc.stderr.startswith("head_types.py: error:") and "no such run folder" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_probe_outputs_group_each_scripts_files(tmp_path):
    """Run.probe_outputs: name.csv and name_<table>.csv belong to name (its HTML names it)."""
    import shutil

    import guppy
    from guppy.run.reader import RunError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"schema_version": 1}')
    assert guppy.open_run(run_dir).probe_outputs() == {}
    out = run_dir / "probes"
    out.mkdir()
    for f in ("logit_lens.csv", "logit_lens_top.csv", "logit_lens.html", "patching_resid.csv", "patching_heads.csv",
              "patching.html", "topic_probe.csv", "plotly.min.js", ".patching.html.tmp"):
        (out / f).write_text("a,b\n1,2\n")
    (out / "bad.csv").write_bytes(b"\xff\xfe\x00")
    got = guppy.open_run(run_dir).probe_outputs()
    assert list(got) == ["bad", "logit_lens", "patching", "topic_probe"]
    assert set(got["logit_lens"].tables) == {"", "top"} and got["logit_lens"].html.name == "logit_lens.html"
    assert set(got["patching"].tables) == {"resid", "heads"} and got["topic_probe"].html is None
    assert got["patching"].read("heads").columns.tolist() == ["a", "b"]
    with pytest.raises(RunError, match="no table"):
        got["patching"].read("")
    with pytest.raises(RunError, match="bad.csv"):
        got["bad"].read()
    shutil.rmtree(out)
