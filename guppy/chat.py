"""`guppy-chat`: talk to a trained run.

    guppy-chat --run runs/demo                 # interactive; empty line skips, Ctrl-D quits
    guppy-chat --run runs/demo -p "hi guppy"   # one shot (repeat -p for several)

Loads safetensors weights only (nothing is unpickled) and samples with the KV cache.
"""

from __future__ import annotations

import sys

from guppy.cli import ArgumentParser, add_run_flags, load_chosen_run, positive_int, run_main
from guppy.model.generate import generate


class Chatter:
    """A loaded model and tokenizer that answer one prompt at a time."""

    def __init__(self, model, tokenizer, temperature=0.7, top_k=None, top_p=0.9, max_tokens=64, seed=None):
        self.model, self.tok = model, tokenizer
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        self.max_tokens = min(max_tokens, model.cfg.n_ctx // 2)
        self.truncated = 0  # user tokens dropped from the last prompt

    def prompt_ids(self, text: str) -> list[int]:
        """Chat prefix for `text`; a message that would crowd out the reply keeps its end."""
        room = self.model.cfg.n_ctx - self.max_tokens
        ids = self.tok.encode_prompt(text, max_len=room)
        self.truncated = len(self.tok.encode_prompt(text)) - len(ids)
        return ids

    def reply(self, text: str) -> str:
        new = generate(self.model, self.prompt_ids(text), max_new_tokens=self.max_tokens,
                       stop_token=self.tok.end_id, **self.sampling)
        return self.tok.decode(new).strip()


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="guppy-chat", description="Talk to a trained guppy run.")
    add_run_flags(p)
    p.add_argument("-p", "--prompt", action="append", help="answer this and exit (repeatable)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy (default 0.7)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    p.add_argument("--max-tokens", type=positive_int, default=64, help="longest reply in tokens (default 64)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed, for repeatable replies")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        from guppy.run.writer import read_run_json

        if args.temperature < 0 or not 0 < args.top_p <= 1:
            raise ValueError("--temperature must be >= 0 and --top-p in (0, 1]")
        model, tok, path, run = load_chosen_run(args)
        bot = Chatter(model, tok, args.temperature, args.top_k, args.top_p, args.max_tokens, args.seed)
        name = read_run_json(run).get("data_stats", {}).get("persona", "guppy")
        if args.prompt:
            for text in args.prompt:
                print(f"you: {text}\n{name}: {bot.reply(text) if text.strip() else '...'}")
            return 0
        try:  # Ctrl-C or Ctrl-D anywhere in a conversation is a goodbye, not an error
            print(f"talking to {path} (empty line: nothing to say; Ctrl-D or Ctrl-C: leave)", flush=True)
            while True:
                text = input("you: ")
                if not text.strip():
                    continue
                answer = bot.reply(text)
                if bot.truncated:
                    print(f"(a long message: only its last part fits the {model.cfg.n_ctx}-token context)")
                print(f"{name}: {answer}", flush=True)
        except (EOFError, KeyboardInterrupt):
            print(f"\n{name}: bye.")
            return 0

    return run_main("guppy-chat", body)


if __name__ == "__main__":
    sys.exit(main())
