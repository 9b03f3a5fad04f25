"""guppy-sae: a sparse autoencoder at every snapshot of a run, warm-started along training, scored.

    guppy-sae runs/reference-...                                   # the residual half way up, every snapshot
    guppy-sae runs/demo --hook blocks.0.hook_resid_post --width 1024 --k 16

For each hook and each snapshot, oldest first: activations of the run's own training chats
(regenerated from its data config) at that snapshot's weights, a TopK SAE trained on them with
SAELens (warm-started from the previous snapshot's), scored on held-out chats (guppy.features.
scoring), written whole to runs/<name>/features/<hook>/step-N/; then every feature's lineage
across snapshots (guppy.features.lineage). Resumable: a folder that exists is finished and is
skipped, so a killed run loses only the snapshot it was on. Settings are fixed per hook
(features/<hook>/settings.json): other settings are refused, or start over with --fresh.
"""

from __future__ import annotations

import shutil
import sys
import time

from guppy.cli import ArgumentParser, positive_int, run_main, torch_threads
from guppy.features.lineage import MATCH_COSINE
from guppy.features.sae import SAESettings

PROG = "guppy-sae"


def parser() -> ArgumentParser:
    d = SAESettings(hook="")
    p = ArgumentParser(prog=PROG, description="Train and score a sparse autoencoder at every snapshot of a recorded run.")
    p.add_argument("run", help="a recorded run folder, e.g. runs/reference-20261201-120000")
    p.add_argument("--hook", action="append", help="hook point(s) to read, a d_model-wide point of a block "
                   "(repeat the flag for several); default blocks.{n_layers/2 - 1}.hook_resid_post")
    p.add_argument("--width", type=positive_int, default=None, help="SAE latents (default 4 x d_model)")
    p.add_argument("--k", type=positive_int, default=d.k, help=f"latents firing per token (default {d.k})")
    p.add_argument("--tokens", type=positive_int, default=d.tokens,
                   help=f"training-chat tokens gathered per snapshot (default {d.tokens:,})")
    p.add_argument("--first-steps", type=int, default=d.first_steps,
                   help=f"SAE steps of {d.batch} activations for the first snapshot's SAE (default {d.first_steps})")
    p.add_argument("--warm-steps", type=int, default=d.warm_steps,
                   help=f"SAE steps for each later one, warm-started from the one before (default {d.warm_steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"SAE learning rate of the first snapshot's (default {d.lr:g})")
    p.add_argument("--warm-lr", type=float, default=d.warm_lr,
                   help=f"SAE learning rate of a warm start (default {d.warm_lr:g})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the chat sample and the SAE's init (default 0)")
    p.add_argument("--heldout", type=positive_int, default=1200,
                   help="held-out chats to score on, round-robin over topics (default 1200: 20 per topic of the fish)")
    p.add_argument("--match-cosine", type=float, default=MATCH_COSINE,
                   help=f"decoder cosine at which features of consecutive snapshots match (default {MATCH_COSINE})")
    p.add_argument("--fresh", action="store_true", help="delete this hook's SAEs and start again")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def plan(args):
    """Everything checked before anything is written: (run, steps, [(hook, settings, done steps)])."""
    import guppy
    from guppy.features import store
    from guppy.features.activations import check_hook, default_hook
    from guppy.run import format as R

    if not 0 < args.match_cosine < 1:
        raise ValueError(f"--match-cosine must be in (0, 1), got {args.match_cosine}")
    run = guppy.open_run(args.run)
    steps = [s for s in run.snapshot_files if s in R.list_checkpoints(run.path)]
    if not steps:
        raise ValueError(f"{run.path}: no snapshots with weights (record the run with guppy-train --record)")
    cfg = run.model_config
    hooks = list(dict.fromkeys(args.hook or [default_hook(cfg.n_layers)]))
    work = []
    for hook in hooks:
        check_hook(hook, cfg.n_layers)
        settings = SAESettings(hook=hook, width=args.width or 0, k=args.k, tokens=args.tokens, first_steps=args.first_steps,
                               warm_steps=args.warm_steps, lr=args.lr, warm_lr=args.warm_lr,
                               seed=args.seed).resolved(cfg.d_model)
        old = store.read_settings(run.path, hook)
        done = {} if args.fresh else R.list_saes(run.path, hook)
        held = store.settings_extra(run.path, hook).get("heldout_chats", args.heldout)
        if old is not None and not args.fresh and (old != settings or held != args.heldout):
            diff = ", ".join([f"{k} {v}" for k, v in old.to_dict().items() if settings.to_dict()[k] != v] +
                             ([f"--heldout {held}"] if held != args.heldout else []))
            raise ValueError(f"{R.features_dir(run.path, hook)} holds SAEs trained and scored with {diff}; give the "
                             "same settings to resume, or --fresh to delete them and start again")
        work.append((hook, settings, done))
    return run, steps, work


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body():
        run, steps, work = plan(args)
        with torch_threads(args.threads):
            for hook, settings, done in work:
                compute_hook(run, steps, hook, settings, done, args)

    return run_main(PROG, body)


def compute_hook(run, steps: list[int], hook: str, settings: SAESettings, done: dict, args) -> None:
    """Every missing snapshot's SAE of one hook, oldest first, then the lineage table."""
    from guppy.features import activations as A
    from guppy.features import store
    from guppy.features.sae import SparseCoder, train_sae
    from guppy.features.scoring import score_sae
    from guppy.run import format as R
    from guppy.run.writer import progress

    t_start = time.perf_counter()
    if args.fresh and R.features_dir(run.path, hook).exists():
        shutil.rmtree(R.features_dir(run.path, hook))
    store.write_settings(run.path, hook, settings, {"heldout_chats": args.heldout, "match_cosine": args.match_cosine})
    todo = [s for s in steps if s not in done]
    heldout, memory, persona_topics, vocab = scoring_inputs(run, args.heldout)
    train_batch = A.batch_of(run, A.training_chats(run, settings.tokens, settings.seed))
    real = A.real_positions(train_batch)
    bar = progress(len(steps), len(steps) - len(todo), not args.quiet)
    bar.unit, bar.desc = "snapshot", hook
    means = {}  # step -> the mean of its training activations, to move a warm start's decoder bias
    for step in todo:
        t0 = time.perf_counter()
        model = run.model(step)
        x = A.hook_activations(model, train_batch.tokens, hook)[real]  # (N, D)
        earlier = [s for s in R.list_saes(run.path, hook) if s < step]
        init = SparseCoder.load(R.sae_dir(run.path, hook, earlier[-1])) if earlier else None
        if earlier and earlier[-1] not in means:  # resumed: the previous snapshot's activations once more
            means[earlier[-1]] = A.hook_activations(run.model(earlier[-1]), train_batch.tokens, hook)[real].mean(0)
        means[step] = x.mean(0)
        t1 = time.perf_counter()
        sae = train_sae(x, settings, init, init_mean=means[earlier[-1]] if earlier else None)
        coder = SparseCoder.from_sae(sae)
        t2 = time.perf_counter()
        scores = score_sae(model, coder, heldout, hook, x, persona_topics, vocab, memory)
        t3 = time.perf_counter()
        summary = scores.summary | {"warm_start": earlier[-1] if earlier else None, "seconds": round(t3 - t0, 2),
                                    "seconds_acts": round(t1 - t0, 2), "seconds_train": round(t2 - t1, 2),
                                    "seconds_score": round(t3 - t2, 2)}
        store.write_snapshot(run.path, hook, step, sae, scores, summary)
        bar.set_postfix_str(f"step {step}: EV {summary['explained_variance']:.2f}, "
                            f"topics {summary['topics_found']}/{summary['topics']}", refresh=False)
        bar.update(1)
    bar.close()
    store.write_lineage(run.path, hook, args.match_cosine)
    s = store.read_summary(run.path, hook)
    last = s.iloc[-1]
    print(f"{PROG}: {hook}: {len(s)} SAEs in {R.features_dir(run.path, hook)} ({time.perf_counter() - t_start:.0f} s); "
          f"step {int(last.step)}: explained variance {last.explained_variance:.3f}, loss recovered "
          f"{last.loss_recovered:.3f}, topics found {int(last.topics_found)}/{int(last.topics)}")


def scoring_inputs(run, n_heldout: int):
    """The held-out chats (a batch), the held-out memory chats by kind (RecallBatch each, or {}),
    the persona's topics and the text of every token id."""
    from guppy.analysis.heldout import heldout_chats
    from guppy.analysis.memory_recall import recall_batch
    from guppy.features.activations import batch_of
    from guppy.run.reader import load_run_dataset

    data = load_run_dataset(run.path)
    heldout = batch_of(run, heldout_chats(run, n_heldout))
    memory, n_ctx = {}, run.model_config.n_ctx
    for kind, spec in data.persona.memory.items():
        chats = [c for c in data.chats.eval if c.recall and c.topic == spec.topic][:200]
        ids, _ = run.tokenizer.encode_chats([c.prompt for c in chats], [c.reply for c in chats], [c.history for c in chats])
        fits = [c for c, x in zip(chats, ids) if len(x) <= n_ctx + 1]  # recall_batch drops the longer ones
        if fits:
            memory[kind] = recall_batch(run.tokenizer, fits, n_ctx)
    tok = run.tokenizer
    vocab = [tok.decode([i], skip_special=False) for i in range(tok.vocab_size)]
    return heldout, memory, list(data.persona.topics), vocab


if __name__ == "__main__":
    sys.exit(main())
