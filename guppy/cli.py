"""Shared command-line plumbing: user mistakes end in one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


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
