"""guppy-sae and guppy.features: SAELens reads our SAEs and reconstructs exactly what we do, a warm start
starts from the previous snapshot's SAE, the lineage finds a planted split (and merge, birth, death),
the F1 tables match a hand count, and the command refuses bad input before writing, resumes, and
leaves older runs reading as not computed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import guppy
from guppy.features import activations as A
from guppy.features import store
from guppy.features.cli import main
from guppy.features.lineage import lifeline, lineages
from guppy.features.sae import SAESettings, SparseCoder, save_sae, train_sae
from guppy.features.scoring import f1_table
from guppy.run import format as R
from tests.conftest import TINY_SAE_FLAGS

HOOK = "blocks.0.hook_resid_post"
SMALL = TINY_SAE_FLAGS


@pytest.fixture
def sae_run(tiny_sae_run) -> Path:
    return tiny_sae_run


def acts_at(run_dir: Path, step, n_tokens: int = 1500) -> torch.Tensor:
    run = guppy.open_run(run_dir)
    batch = A.batch_of(run, A.training_chats(run, n_tokens, seed=0))
    return A.hook_activations(run.model(step), batch.tokens, HOOK)[A.real_positions(batch)]


# ---- SAELens's format -------------------------------------------------------------------------


def test_saelens_loads_our_sae_and_reconstructs_what_we_do(tiny_recorded_run, tmp_path):
    from sae_lens import SAE

    x = acts_at(tiny_recorded_run, "latest")
    settings = SAESettings(hook=HOOK, width=64, k=6, first_steps=40, batch=256)
    sae = train_sae(x, settings)  # SAELens's TopKTrainingSAE, trained in memory
    save_sae(sae, tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [R.SAE_CFG_FILE, R.SAE_WEIGHTS_FILE]
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert type(loaded).__name__ == "TopKSAE" and loaded.cfg.metadata.hook_name == HOOK
    ours = SparseCoder.load(tmp_path / "sae")
    with torch.no_grad():
        trained, theirs = sae(x), loaded(x)
        assert torch.equal(loaded.encode(x) > 0, ours.encode(x) > 0)  # the same k latents fire
    torch.testing.assert_close(ours(x), theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(x), trained, rtol=1e-5, atol=1e-5)  # folding the decoder norms changed nothing
    assert ((ours.encode(x) > 0).sum(-1) <= 6).all()
    ev = 1 - (ours(x) - x).pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()
    assert ev > 0.3  # it learned something in 40 steps


def test_a_saved_sae_is_whole_or_absent(tmp_path):
    """save_sae writes into a temporary name: a folder that fails half way leaves nothing listed."""
    settings = SAESettings(hook=HOOK, width=16, k=2, first_steps=0)
    sae = train_sae(torch.randn(64, 8), settings)
    folder = R.sae_dir(tmp_path, HOOK, 5)
    folder.parent.mkdir(parents=True)

    def broken(path):
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_sae(sae, folder, {"extra.csv": broken})
    assert R.list_saes(tmp_path, HOOK) == {} and list(folder.parent.iterdir()) == []
    save_sae(sae, folder)
    assert list(R.list_saes(tmp_path, HOOK)) == [5]


# ---- warm starts ------------------------------------------------------------------------------


def test_a_warm_start_begins_at_the_previous_sae(tiny_recorded_run):
    steps = list(guppy.open_run(tiny_recorded_run).snapshot_files)
    x1, x2 = acts_at(tiny_recorded_run, steps[-2]), acts_at(tiny_recorded_run, steps[-1])
    settings = SAESettings(hook=HOOK, width=64, k=6, first_steps=80, warm_steps=40, batch=256)
    first = SparseCoder.from_sae(train_sae(x1, settings))
    # no steps: the warm-started SAE is the previous one, whatever the new activations' scale
    kept = SparseCoder.from_sae(train_sae(x2 * 7.0, settings, init=first, steps=0))
    torch.testing.assert_close(kept(x2), first(x2), rtol=1e-5, atol=1e-5)
    # trained on: the features stay matched to the previous ones; a cold start with another seed shares few
    warm = SparseCoder.from_sae(train_sae(x2, settings, init=first))
    cold = SparseCoder.from_sae(train_sae(x2, SAESettings(**settings.to_dict() | {"seed": 1})))
    alive = torch.ones(64, dtype=torch.bool)
    kept_warm = (lineages([(0, first.W_dec, alive), (1, warm.W_dec, alive)]).query("step == 1").event == "continues").mean()
    kept_cold = (lineages([(0, first.W_dec, alive), (1, cold.W_dec, alive)]).query("step == 1").event == "continues").mean()
    assert kept_warm > 0.8 and kept_cold < 0.5, (kept_warm, kept_cold)


def test_a_warm_start_follows_the_mean_of_the_activations(tiny_recorded_run):
    """The residual's mean moves over training: a warm start moves the decoder bias with it, so the previous
    SAE reconstructs the moved activations as well as it did the old ones (before a step of training), and
    training on from there keeps most of that (at the warm rate, not the cold start's)."""
    x = acts_at(tiny_recorded_run, "latest")
    settings = SAESettings(hook=HOOK, width=64, k=6, first_steps=80, warm_steps=40, batch=256)
    first = SparseCoder.from_sae(train_sae(x, settings))
    moved = x + 3 * x.std() * torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0))

    def ev(coder, a):
        return float(1 - (coder(a) - a).pow(2).sum() / (a - a.mean(0)).pow(2).sum())

    kept = SparseCoder.from_sae(train_sae(moved, settings, init=first, steps=0, init_mean=x.mean(0)))
    torch.testing.assert_close(kept(moved), first(x) + (moved - x), rtol=1e-4, atol=1e-4)
    assert ev(first, moved) < 0 < ev(first, x) - 0.01 < ev(kept, moved)  # unmoved, the bias alone undoes it
    warm = SparseCoder.from_sae(train_sae(moved, settings, init=first, init_mean=x.mean(0)))
    assert ev(warm, moved) > ev(first, x) - 0.1, (ev(warm, moved), ev(first, x))


# ---- lineage ----------------------------------------------------------------------------------


def planted(seed: int = 0, F: int = 8, D: int = 32):
    """Three snapshots' decoders: at the second, feature 3 splits into 3 and 6 (its direction plus and minus
    an orthogonal half), 5 dies and 7 is born; at the third, 3 and 6 merge back into 3."""
    g = torch.Generator().manual_seed(seed)
    a = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:F + 2]  # orthonormal rows
    e, new = a[F], a[F + 1]
    dec_a = a[:F].clone()
    dec_b = dec_a + 0.02 * torch.randn(F, D, generator=g)  # everything drifts a little
    dec_b[3], dec_b[6] = a[3] + 0.5 * e, a[3] - 0.5 * e  # cosine 0.89 with the parent
    dec_b[7] = new
    dec_c = dec_b.clone()
    dec_c[3] = a[3]
    alive = torch.ones(F, dtype=torch.bool)
    alive_a = alive.clone()
    alive_a[6] = alive_a[7] = False  # not yet in use
    alive_b = alive.clone()
    alive_b[5] = False  # went dead
    alive_c = alive_b.clone()
    alive_c[6] = False  # merged away
    return [(0, dec_a, alive_a), (10, dec_b, alive_b), (20, dec_c, alive_c)]


def test_lineage_finds_a_planted_split_merge_birth_and_death():
    table = lineages(planted())
    at = {(r.step, r.feature): r for r in table.itertuples()}
    parent = at[(0, 3)].lineage
    assert at[(10, 3)].event == at[(10, 6)].event == "split"
    assert at[(10, 3)].parents == at[(10, 6)].parents == str(parent)
    assert at[(10, 3)].lineage != parent and at[(10, 3)].cosine == pytest.approx(1 / np.sqrt(1.25), abs=1e-4)
    assert at[(10, 7)].event == "born" and np.isnan(at[(10, 7)].cosine)
    assert (10, 5) not in at and table[table.lineage == at[(0, 5)].lineage].step.max() == 0  # died after step 0
    for f in (0, 1, 2, 4):
        assert at[(10, f)].event == at[(20, f)].event == "continues" and at[(20, f)].lineage == at[(0, f)].lineage
    assert at[(20, 3)].event == "merged"
    assert sorted(at[(20, 3)].parents.split(",")) == sorted([str(at[(10, 3)].lineage), str(at[(10, 6)].lineage)])
    life = lifeline(table, at[(10, 6)].lineage)
    assert set(life.relation) == {"self", "parent", "child"} and life[life.relation == "parent"].lineage.iloc[0] == parent


def test_lineage_on_a_tiny_run_finds_a_split_planted_in_its_last_sae(sae_run, tmp_path):
    """The lineage of real SAEs, from their files: plant a split in the last snapshot's SAE (a live feature's
    decoder direction replaced by two halves, one in place of the rarest other feature) and rebuild lineage.csv."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(sae_run, run)
    saes = R.list_saes(run, HOOK)
    (before, _), (last, folder) = list(saes.items())[-2:]
    table = store.read_lineage(run, HOOK)
    assert set(table.event) <= set(R.LINEAGE_EVENTS) and set(table.step) <= set(saes)
    feats = store.read_features(run, HOOK)
    prev, now = feats[feats.step == before], feats[feats.step == last]
    j = int(now[(now.event == "continues") & ~now.dead].feature.iloc[0])  # a feature that continues
    k = int(now[now.feature != j].sort_values("density").feature.iloc[0])  # the rarest other one becomes its twin
    w = load_file(folder / R.SAE_WEIGHTS_FILE)
    d = w["W_dec"][j]
    e = torch.randn(len(d), generator=torch.Generator().manual_seed(0))
    e = e - (e @ d) / (d @ d) * d
    e = e / e.norm() * d.norm() * 0.5
    w["W_dec"][j], w["W_dec"][k] = d + e, d - e
    save_file(w, folder / R.SAE_WEIGHTS_FILE)
    now.assign(dead=now.dead & (now.feature != k))[list(R.FEATURE_COLUMNS)].to_csv(folder / R.FEATURE_TABLE, index=False)
    store.write_lineage(run, HOOK)
    feats = guppy.open_run(run).features(HOOK)
    at = feats.set_index(["step", "feature"])
    parent = at.loc[(before, int(prev[prev.lineage == at.loc[(before, j)].lineage].feature.iloc[0]))].lineage
    assert at.loc[(last, j)].event == at.loc[(last, k)].event == "split"
    assert at.loc[(last, j)].parents == at.loc[(last, k)].parents == str(parent)


# ---- scoring ----------------------------------------------------------------------------------


def test_f1_table_matches_a_hand_count():
    g = np.random.default_rng(0)
    fires, labels = g.random((50, 4)) < 0.3, g.random((50, 3)) < 0.4
    f1, precision, recall = f1_table(torch.from_numpy(fires), torch.from_numpy(labels))
    for i in range(4):
        for c in range(3):
            tp = int((fires[:, i] & labels[:, c]).sum())
            p = tp / fires[:, i].sum() if fires[:, i].sum() else 0.0
            r = tp / labels[:, c].sum()
            assert precision[i, c] == pytest.approx(p) and recall[i, c] == pytest.approx(r)
            assert f1[i, c] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)


def test_the_scores_of_a_tiny_run(sae_run):
    run = guppy.open_run(sae_run)
    summary = run.feature_summary()
    assert list(summary.step) == [s for s in run.snapshot_files]
    assert summary.warm_start.isna().sum() == 1 and (summary.warm_start.dropna().to_numpy() == summary.step.to_numpy()[:-1]).all()
    last = summary.iloc[-1]
    assert 0 < last.explained_variance <= 1 and last.l0 == pytest.approx(8, abs=0.01)
    assert last.loss_clean <= last.loss_spliced < last.loss_zero  # the SAE recovers part of what zeroing loses
    topics = run.feature_topics()
    assert set(topics.topic) == {"greeting", "meaning_of_life", "water"} and topics.score.between(0, 1).all()
    feats = run.features()
    assert len(feats) == 96 * len(summary) and (feats[feats.dead].lineage == -1).all()
    row = topics[topics.step == last.step].iloc[0]
    mine = feats[(feats.step == last.step) & (feats.feature == row.feature)].iloc[0]
    assert mine.score >= row.score - 1e-6  # the feature's own best topic scores at least as high
    assert run.sae().k == 8 and run.sae("first").width == 96


# ---- the command ------------------------------------------------------------------------------


def run_sae(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "guppy.features.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("flags, message", [
    (["--hook", "blocks.9.hook_resid_post"], "L in 0..1"),
    (["--hook", "blocks.0.attn.hook_pattern"], "d_model-wide point"),
    (["--width", "8", "--k", "9"], "--k 9 is more than --width 8"),
    (["--match-cosine", "1.5"], "--match-cosine"),
    (["--lr", "0"], "lr=0"),
])
def test_bad_input_is_refused_before_anything_is_written(tiny_recorded_run, tmp_path, flags, message):
    run = tmp_path / "run"
    shutil.copytree(tiny_recorded_run, run)
    out = run_sae(str(run), *flags)
    assert out.returncode != 0 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (run / R.FEATURES_DIR).exists()


def test_other_settings_are_refused_and_a_killed_run_resumes(sae_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sae_run, run)
    saes = R.list_saes(run, HOOK)
    out = run_sae(str(run), "--hook", HOOK, *[("12" if a == "8" else a) for a in SMALL])
    assert out.returncode == 1 and "k 8" in out.stderr and "--fresh" in out.stderr
    last = max(saes)
    shutil.rmtree(saes[last])  # killed during the last snapshot: its temporary folder is all that is left
    (saes[last].parent / f".{saes[last].name}.tmp").mkdir()
    kept = {s: (f / R.SAE_WEIGHTS_FILE).stat().st_mtime_ns for s, f in saes.items() if s != last}
    assert main([str(run), "--hook", HOOK, *SMALL]) == 0
    now = R.list_saes(run, HOOK)
    assert list(now) == list(saes)
    assert {s: (now[s] / R.SAE_WEIGHTS_FILE).stat().st_mtime_ns for s in kept} == kept  # finished ones untouched
    assert json.loads((now[last] / R.SAE_SUMMARY_FILE).read_text())["warm_start"] == list(saes)[-2]
    assert set(store.read_lineage(run, HOOK).step) <= set(saes)


def test_a_run_without_features_reads_as_not_computed(tiny_recorded_run):
    run = guppy.open_run(tiny_recorded_run)
    assert run.feature_hooks == []
    feats = run.features()
    assert feats.empty and {"step", "feature", "lineage", "event", "topic", "score", "density"} <= set(feats.columns)
    assert run.feature_topics().empty and run.feature_summary().empty
    with pytest.raises(guppy.RunError, match="guppy-sae"):
        run.sae()


# ---- docs/features.md's commands -------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "features.md"


def docs_commands() -> list[str]:
    import re

    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith(("guppy-sae ", "python "))]


@pytest.mark.slow  # ~60 s on 2 busy cores: guppy-sae twice (the page's command and the benchmark's), the figure
def test_the_docs_commands_run(tiny_recorded_run, tmp_path):
    """Every guppy-sae / python command of docs/features.md, on a copy of the tiny recorded run in place of the
    reference fish's run, with the tiny SAE settings added (the docs' defaults are sized for the 8.7M fish)."""
    import re
    import shlex

    run = tmp_path / "run"
    shutil.copytree(tiny_recorded_run, run)
    commands = docs_commands()
    assert [c.split()[0 if c.startswith("guppy") else 1] for c in commands] == \
        ["guppy-sae", "experiments/feature_figures.py", "benchmarks/bench_sae.py"]
    root = DOCS.parents[1]
    for cmd in commands:
        args = [re.sub(r"^runs/reference-[\w-]+", str(run), a) for a in shlex.split(cmd)]
        args = [str(tmp_path / "figures") if a == "docs/features" else a for a in args]
        if args[0] == "guppy-sae":
            args = [sys.executable, "-m", "guppy.features.cli", *args[1:], *TINY_SAE_FLAGS]
        elif "bench_sae" in args[1]:
            args = [sys.executable, *args[1:], "--", *TINY_SAE_FLAGS]
        else:
            args = [sys.executable, *args[1:]]
        out = subprocess.run(args, capture_output=True, text=True, cwd=root, timeout=600)
        assert out.returncode == 0, (cmd, out.stderr[-2000:])
        if "feature_figures" in cmd:
            assert "topics found (F1 >= 0.8)" in out.stdout and (tmp_path / "figures" / "topics_found.png").stat().st_size > 10_000
        if "bench_sae" in cmd:
            assert "guppy-sae wall time" in out.stdout and "explained variance" in out.stdout


def test_the_docs_python_snippet_runs(tiny_sae_run):
    import re

    code = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)[0]
    assert '"runs/reference-' in code and "SAE.load_from_disk" in code
    scope: dict = {}
    exec(compile(re.sub(r'"runs/reference-[\w-]+"', repr(str(tiny_sae_run)), code), "docs/features.md", "exec"), scope)
    assert ((scope["codes"] > 0).sum(-1) == scope["sae"].k).all()
    assert type(scope["theirs"]).__name__ == "TopKSAE" and len(scope["feats"]) == len(scope["summary"]) * scope["sae"].width


def test_card_stats_match_a_direct_count():
    from guppy.features.scoring import HIST_BINS, _card_stats

    g = torch.Generator().manual_seed(0)
    coder = SparseCoder(torch.randn(8, 24, generator=g), torch.zeros(24), torch.randn(24, 8, generator=g), torch.zeros(8), k=3)
    acts = torch.randn(10, 7, 8, generator=g)
    real = torch.arange(7)[None] < torch.randint(2, 8, (10, 1), generator=g)
    got = _card_stats(coder, acts, real, chunk=3)
    f = coder.encode(acts[real])  # (n, 24)
    assert torch.equal(got["fired"], (f > 0).sum(0).float())
    torch.testing.assert_close(got["hist_max"], f.max(0).values)
    assert torch.equal(got["hist"].sum(1), (f > 0).sum(0).int())
    j = int(got["fired"].argmax())
    edges = torch.linspace(0, float(f[:, j].max()), HIST_BINS + 1)
    direct = torch.histc(f[:, j][f[:, j] > 0], bins=HIST_BINS, min=0, max=float(edges[-1]))
    assert torch.equal(got["hist"][j], direct.int())
    per_chat = torch.stack([coder.encode(acts[b][real[b]]).max(0).values for b in range(10)])  # (B, F)
    assert torch.equal(got["top_chats"][j, 0], per_chat[:, j].argmax().int())


def test_memory_features_read_the_positions_that_say_the_item(tiny_recorded_run):
    """Memory chats of the test persona through the tiny run's tokenizer: the labelled positions are exactly those
    followed by the recalled item's tokens, and every kind gets its best feature."""
    from guppy.analysis.memory_recall import recall_batch
    from guppy.data.dataset import DataConfig, generate_chats
    from guppy.data.persona import load_persona
    from guppy.features.scoring import memory_features, recall_positions
    from guppy.model.transformer import GuppyLM
    from tests.conftest import MINI

    run = guppy.open_run(tiny_recorded_run)
    persona = load_persona(str(MINI))
    chats = generate_chats(persona, DataConfig(persona=str(MINI), n_chats=300, vocab_size=400, memory_fraction=0.5)).eval
    model = GuppyLM(run.model_config.replace(n_ctx=192)).eval()  # memory chats run past the tiny preset's 64 positions
    by_kind = {k: recall_batch(run.tokenizer, [c for c in chats if c.topic == m.topic], 192) for k, m in persona.memory.items()}
    for batch in by_kind.values():
        real, item = recall_positions(batch)
        assert not (item & ~real).any()
        for row, chat in enumerate(batch.chats):
            said = batch.tokens[row][1:][item[row][:-1]]  # the tokens right after the labelled positions
            assert chat.recall in run.tokenizer.decode(said.tolist())
    coder = SparseCoder(torch.randn(32, 48), torch.zeros(48), torch.randn(48, 32), torch.zeros(32), k=4)
    table = memory_features(model, coder, by_kind, HOOK)
    assert list(table.kind) == list(persona.memory) and table.score.between(0, 1).all()
    assert (table.n_items == [len(b.chats) for b in by_kind.values()]).all()
