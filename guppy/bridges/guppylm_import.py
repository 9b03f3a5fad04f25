"""`guppy-import`: GuppyLM checkpoints into an ordinary guppy run folder.

    guppy-import checkpoints/                          # every step_<N>.pt -> our checkpoint at step N
    guppy-import checkpoints/best_model.pt --name published-fish
    guppy-import pytorch_model.bin --config config.json --tokenizer tokenizer.json

The run folder gets safetensors weights per step, GuppyLM's tokenizer.json unchanged (with
chat.json naming its special tokens), a metrics.csv from the training losses the checkpoints
carry, and run.json saying where it all came from. Every guppy tool opens it; `guppy-record RUN`
then computes the snapshots the dashboard replays.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from guppy.bridges.guppylm_format import (
    CONFIG_FILE,
    STATE_DICT_FILE,
    TOKENIZER_FILE,
    FormatError,
    GuppyLMConfig,
    GuppyLMFile,
    load_file,
    read_config_json,
    series,
    to_guppy,
)
from guppy.run import format as R
from guppy.run import writer as run_writer

# the single-file names GuppyLM's training script and hub download leave, in the order tried
SINGLE_FILES = (STATE_DICT_FILE, "best_model.pt", "final_model.pt")
LOG_EVERY = 10  # metrics.csv rows from the per-step training losses: one mean per 10 steps, as guppy-train logs
IMPORTED = R.IMPORTED_STATUS  # run.json status of an imported run


def plan(path: Path, step: int | None) -> tuple[list[tuple[int, Path]], list[str]]:
    """(step, file) pairs to import in step order, and notes on files left out.

    A folder imports its step_<N>.pt series, plus best_model.pt and final_model.pt where they
    hold a step the series lacks. A single file, or a folder with only a bare state dict, is one
    checkpoint at its saved step (else `step`, else 0)."""
    if path.is_file():
        return [(_step_of(load_file(path), step), path)], []
    if not path.is_dir():
        raise FormatError(f"{path}: no such file or folder")
    found, notes = series(path), []
    for name in ("final_model.pt", "best_model.pt"):
        if not (path / name).is_file():
            continue
        f = load_file(path / name)
        if f.step is not None and f.step not in found:
            found[f.step] = path / name
        elif f.step is not None:
            notes.append(f"{name} left out: it repeats step {f.step} ({found[f.step].name})")
    if found:
        return sorted(found.items()), notes
    for name in SINGLE_FILES:
        if (path / name).is_file():
            return [(_step_of(load_file(path / name), step), path / name)], notes
    raise FormatError(f"{path}: no GuppyLM checkpoint here (step_<N>.pt, {', '.join(SINGLE_FILES)})")


def checkpoint_folder(path: Path) -> Path:
    """GuppyLM's repository root holds its checkpoints in checkpoints/: accept either."""
    inner = path / "checkpoints"
    if path.is_dir() and inner.is_dir() and not series(path) and not any((path / n).is_file() for n in SINGLE_FILES):
        return inner
    return path


def _step_of(f: GuppyLMFile, step: int | None) -> int:
    return step if step is not None else (f.step if f.step is not None else 0)


def find_beside(path: Path, name: str, explicit: str | None, what: str, flag: str) -> Path:
    """`explicit`, else `name` beside the checkpoint, in its parent or in ../data (GuppyLM's layout:
    checkpoints/config.json and data/tokenizer.json)."""
    if explicit:
        if not Path(explicit).is_file():
            raise FormatError(f"{explicit}: no such {what} file")
        return Path(explicit)
    folder = path if path.is_dir() else path.parent
    places = [folder / name, folder.parent / name, folder.parent / "data" / name]
    for p in places:
        if p.is_file():
            return p
    raise FormatError(f"no {name} beside {path} (looked in {', '.join(str(p.parent) for p in places)}); pass {flag}")


def resolve_config(first: GuppyLMFile, path: Path, explicit: str | None) -> tuple[GuppyLMConfig, str]:
    """The config of the weights: --config, else the one saved in the checkpoint, else config.json."""
    if explicit:
        return GuppyLMConfig.from_dict(read_config_json(Path(explicit)), explicit), explicit
    if first.config is not None:
        return GuppyLMConfig.from_dict(first.config, f"{first.path} (its config)"), str(first.path)
    try:
        where = find_beside(path, CONFIG_FILE, None, "config", "--config")
    except FormatError:
        raise FormatError(f"{first.path}: a bare state dict with no {CONFIG_FILE} beside it; pass --config "
                          f"(GuppyLM's hub config.json or its training config)") from None
    return GuppyLMConfig.from_dict(read_config_json(where), str(where)), str(where)


def chat_tokenizer(tokenizer_path: Path, cfg: GuppyLMConfig):
    """GuppyLM's tokenizer as a ChatTokenizer: the config's pad/bos/eos ids name its specials,
    and its prompt is ChatML with them."""
    from tokenizers import Tokenizer

    from guppy.data.tokenizer import ChatFormat, ChatTokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise FormatError(f"{tokenizer_path}: not a Hugging Face tokenizers file ({e})") from None
    names = {}
    for key in ("pad_id", "bos_id", "eos_id"):
        token = tok.id_to_token(getattr(cfg, key))
        if token is None:
            raise FormatError(f"{tokenizer_path}: config {key} = {getattr(cfg, key)} is not a token of this tokenizer")
        names[key] = token
    if tok.get_vocab_size() > cfg.vocab_size:
        raise FormatError(f"{tokenizer_path}: {tok.get_vocab_size()} tokens, more than the config's vocab_size "
                          f"{cfg.vocab_size}")
    start, end = names["bos_id"], names["eos_id"]
    fmt = ChatFormat(pad=names["pad_id"], start=start, end=end, prompt=f"{start}user\n{{prompt}}{end}\n{start}assistant\n")
    return ChatTokenizer(tok, fmt)


@dataclass
class Checked:
    """Everything an import reads, checked before the run folder exists."""

    path: Path
    todo: list[tuple[int, Path]]  # (our step, GuppyLM file), in step order
    notes: list[str]
    first: GuppyLMFile
    cfg: GuppyLMConfig
    config_from: str
    config_given: bool  # --config: it overrides what each checkpoint saved
    tok_path: Path
    tok: object  # ChatTokenizer


def check(path: Path, tokenizer: str | None, config: str | None, step: int | None) -> Checked:
    path = checkpoint_folder(path)
    todo, notes = plan(path, step)
    first = load_file(todo[0][1])
    cfg, config_from = resolve_config(first, path, config)
    tok_path = find_beside(path, TOKENIZER_FILE, tokenizer, "tokenizer", "--tokenizer")
    return Checked(path, todo, notes, first, cfg, config_from, config is not None, tok_path, chat_tokenizer(tok_path, cfg))


def import_guppylm(path: str | Path, run_dir: str | Path, tokenizer: str | None = None, config: str | None = None,
                   step: int | None = None, data=None, show_progress: bool = False) -> Path:
    """Write the run folder `run_dir` from the GuppyLM checkpoint(s) at `path`; returns run_dir.
    `data` (a DataConfig; default: the fish, as a default guppy run) gives the held-out chats the
    persona eval and the recorder's fixed inputs use. The config, tokenizer and first checkpoint
    are checked before the folder is created; a bad file later in a series removes it again."""
    from guppy.data.dataset import DataConfig

    path, run_dir = Path(path), Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} already exists; pick another --name")
    c = check(path, tokenizer, config, step)
    first_state, ignored = to_guppy(c.first.state, c.cfg, str(c.first.path))
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_run(run_dir, c, first_state, ignored, data or DataConfig(), show_progress)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def write_run(run_dir: Path, c: Checked, first_state: dict, ignored: list[str], data, show_progress: bool) -> None:
    import torch

    from guppy.data.tokenizer import CHAT_FILE, ChatFormat, save_chat_format
    from guppy.model.transformer import GuppyLM
    from guppy.run.checkpoint import save_weights

    run_writer.atomic_write(run_dir / TOKENIZER_FILE, lambda tmp: tmp.write_bytes(c.tok_path.read_bytes()))  # as it was
    if c.tok.format != ChatFormat():
        save_chat_format(run_dir / CHAT_FILE, c.tok.format)
    model = GuppyLM(c.cfg.model_config())
    losses, evals = None, {}
    bar = run_writer.progress(len(c.todo), 0, show_progress)
    try:
        for i, (n, file) in enumerate(c.todo):
            f = c.first if i == 0 else load_file(file)
            if f.config is not None and not c.config_given:
                other = GuppyLMConfig.from_dict(f.config, str(file))
                if other != c.cfg:
                    diff = next(k for k, v in other.to_dict().items() if c.cfg.to_dict()[k] != v)
                    raise FormatError(f"{file}: config {diff} = {getattr(other, diff)}, but {c.config_from} says "
                                      f"{getattr(c.cfg, diff)}")
            state = first_state if i == 0 else to_guppy(f.state, c.cfg, str(file))[0]
            with torch.no_grad():
                model.load_state_dict(state, strict=True)
            save_weights(model, R.checkpoint_path(run_dir, n), n, {"source": str(file.resolve())})
            if f.train_losses and (losses is None or len(f.train_losses) > len(losses)):
                losses = f.train_losses
            if f.eval_loss is not None:
                evals[n] = f.eval_loss
            bar.update(1)
    finally:
        bar.close()
    best = c.path / "best_model.pt"
    if c.path.is_dir() and best.exists() and all(file != best for _, file in c.todo):
        b = load_file(best)
        if b.eval_loss is not None and b.step is not None:
            evals[b.step] = b.eval_loss
    write_metrics(run_dir, losses or [], evals)
    meta = {
        "schema_version": R.SCHEMA_VERSION,
        "status": IMPORTED,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_config": model.cfg.to_dict(),
        # no train_config: guppy did not train it; the eval and the recorder's fixed inputs use our
        # persona's held-out chats (the fish's topics are GuppyLM's), generated as a guppy run does
        "data_config": asdict(data),
        "source": {"format": "guppylm", "path": str(c.path.resolve()), "config": c.cfg.to_dict(),
                   "config_from": c.config_from, "tokenizer": str(c.tok_path.resolve()),
                   "files": {str(n): str(file.resolve()) for n, file in c.todo}, "ignored_keys": ignored,
                   "notes": c.notes},
        "step": c.todo[-1][0],
        "total_steps": c.todo[-1][0],
        "versions": run_writer.versions(),
        "git_commit": run_writer.git_commit(),
        "command": " ".join(sys.argv),
    }
    run_writer.atomic_write(run_dir / R.RUN_JSON, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))


def write_metrics(run_dir: Path, losses: list[float], evals: dict[int, float]) -> None:
    """metrics.csv from GuppyLM's per-step training losses (losses[i] is the loss of the step that
    made our step i + 1) and its eval losses by step."""
    import math

    rows = []
    for end in range(LOG_EVERY, len(losses) + 1, LOG_EVERY):
        rows.append({"step": end, "loss": sum(losses[end - LOG_EVERY:end]) / LOG_EVERY})
    if len(losses) % LOG_EVERY:
        tail = losses[len(losses) - len(losses) % LOG_EVERY:]
        rows.append({"step": len(losses), "loss": sum(tail) / len(tail)})
    rows += [{"step": s, "eval_loss": v, "eval_ppl": math.exp(min(v, 50))} for s, v in sorted(evals.items())]
    if not rows:  # a bare state dict says nothing of its training: no metrics.csv, an empty table for readers
        return
    metrics = run_writer.MetricsWriter(run_dir / R.METRICS_CSV)
    for row in sorted(rows, key=lambda r: r["step"]):
        metrics.write(row)
    metrics.close()


def default_name(path: Path) -> str:
    stem = path.stem if path.is_file() else path.resolve().name
    return f"guppylm-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    from guppy.cli import ArgumentParser, positive_int, run_main

    p = ArgumentParser(prog="guppy-import", description="Import GuppyLM checkpoints as a guppy run.")
    p.add_argument("path", help="a GuppyLM checkpoint (.pt), a bare state dict (pytorch_model.bin), or a folder "
                                "of step_<N>.pt files")
    p.add_argument("--name", default="", help="run folder name under --runs-dir (default: guppylm-<source>-<time>)")
    p.add_argument("--runs-dir", default="runs", help="where the run is written (default runs)")
    p.add_argument("--tokenizer", help="GuppyLM's tokenizer.json, if not beside PATH, in its parent or ../data")
    p.add_argument("--config", help="config.json (hub or training keys), if the checkpoint has none and none is beside it")
    p.add_argument("--step", type=int, default=None, help="step of a single file that does not say (default: its "
                                                          "saved step, else 0)")
    p.add_argument("--persona", default="fish", help="persona whose held-out chats judge and probe the model "
                                                     "(default fish, whose topics are GuppyLM's)")
    p.add_argument("--n-chats", type=positive_int, default=60_000, help="chats generated for it, as guppy-train "
                                                                       "--n-chats (default 60000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    def body():
        if args.name and ("/" in args.name or args.name.startswith(".")):
            raise ValueError(f"--name: {args.name!r} must be a plain folder name")
        if args.step is not None and args.step < 0:
            raise ValueError(f"--step: {args.step} must be >= 0")
        src = Path(args.path)
        run_dir = Path(args.runs_dir) / (args.name or default_name(src))
        t0 = time.perf_counter()
        from guppy.data.dataset import DataConfig
        from guppy.data.persona import load_persona

        load_persona(args.persona)  # a bad --persona is one line before anything is read
        data = DataConfig(persona=args.persona, n_chats=args.n_chats)
        import_guppylm(src, run_dir, args.tokenizer, args.config, args.step, data, show_progress=not args.quiet)
        steps = list(R.list_checkpoints(run_dir))
        meta = run_writer.read_run_json(run_dir)
        for key in meta["source"]["ignored_keys"][:5]:
            print(f"note: ignored {key}: not a parameter of GuppyLM's model", file=sys.stderr)
        for note in meta["source"]["notes"]:
            print(f"note: {note}", file=sys.stderr)
        print(f"imported {len(steps)} checkpoint{'s' * (len(steps) != 1)} (steps {steps[0]}..{steps[-1]}) into "
              f"{run_dir} in {time.perf_counter() - t0:.1f}s; next: guppy-record {run_dir}")

    return run_main("guppy-import", body)


if __name__ == "__main__":
    sys.exit(main())
