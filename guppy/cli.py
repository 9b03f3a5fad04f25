"""Shared command-line plumbing: user mistakes end in one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from guppy.model.precision import torch_threads  # noqa: F401 (re-exported: the commands' --threads)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line (no usage dump) and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """--run, --runs-dir, --checkpoint: which run and checkpoint a command talks to (guppy-chat, guppy-eval)."""
    p.add_argument("--run", help="run folder (default: the newest run under --runs-dir)")
    p.add_argument("--runs-dir", default="runs", help="where to look for the newest run (default runs)")
    p.add_argument("--checkpoint", default="latest", help="checkpoint step number or 'latest' (default)")


def load_chosen_run(args: argparse.Namespace):
    """(model, tokenizer, checkpoint path, run folder) named by `add_run_flags`' flags."""
    from pathlib import Path

    from guppy.run.reader import latest_run, load_for_inference

    run = Path(args.run) if args.run else latest_run(Path(args.runs_dir))
    model, tokenizer, path = load_for_inference(run, args.checkpoint)
    return model, tokenizer, path, run


def run_main(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command body; expected failures become one `prog: error: ...` line and exit 1."""
    try:
        return body() or 0
    except (ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


