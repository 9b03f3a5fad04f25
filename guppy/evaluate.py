"""Persona eval and `guppy-eval`: does the model answer held-out prompts in character?

For every topic, prompts the model never trained on (held out by the data split). A reply
passes when it ends by itself, is lowercase, is short (1 to 40 words) and shows one of the
topic's keywords from the persona file (for the fish's meaning of life: food).

    guppy-eval --run runs/demo --prompts 3
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import torch

from guppy.model.generate import greedy_batch

MAX_WORDS = 40
CHECKS = ("ended", "lowercase", "short", "on_topic")


@dataclass
class EvalResult:
    rows: list[dict]  # one per prompt: topic, prompt, reply, each check, passed

    @property
    def pass_rate(self) -> float:
        return sum(r["passed"] for r in self.rows) / max(1, len(self.rows))

    def per_topic(self) -> dict[str, float]:
        by: dict[str, list[bool]] = {}
        for r in self.rows:
            by.setdefault(r["topic"], []).append(r["passed"])
        return {t: sum(v) / len(v) for t, v in by.items()}


def eval_prompts(chats, per_topic: int) -> list[tuple[str, str]]:
    """The first `per_topic` distinct held-out prompts of each topic, in a fixed order."""
    chosen: dict[str, list[str]] = {}
    for c in chats:
        if c.heldout_prompt and len(chosen.setdefault(c.topic, [])) < per_topic and c.prompt not in chosen[c.topic]:
            chosen[c.topic].append(c.prompt)
    return [(t, p) for t in sorted(chosen) for p in chosen[t]]


def judge(reply: str, ended: bool, keywords) -> dict:
    words = reply.split()
    checks = {
        "ended": ended,
        "lowercase": reply == reply.lower(),
        "short": 1 <= len(words) <= MAX_WORDS,
        # keywords are matched case-blind: a cased tokenizer (GuppyLM's) may write "Food"
        "on_topic": any(re.search(rf"\b{re.escape(k.lower())}\b", reply.lower()) for k in keywords),
    }
    return checks | {"passed": all(checks.values())}


@torch.no_grad()
def persona_eval(model, tokenizer, persona, chats, per_topic: int = 3, max_new_tokens: int = 48,
                 topics: int | None = None) -> EvalResult:
    """Greedy replies to held-out prompts, `per_topic` of each topic, judged; `topics` asks only that
    many topics, spread evenly over the sorted list (the same ones every time)."""
    was_training = model.training
    model.eval()
    rows = []
    chats = [c for c in chats if c.topic in persona.topics]  # memory chats are scored by guppy.analysis.memory_recall
    asked = eval_prompts(chats, per_topic)
    if topics is not None:
        names = sorted({t for t, _ in asked})
        keep = {names[round(i * len(names) / topics)] for i in range(min(topics, len(names)))}
        asked = [(t, p) for t, p in asked if t in keep]
    replies = greedy_batch(model, [tokenizer.encode_prompt(prompt) for _, prompt in asked],
                           max_new_tokens=max_new_tokens, stop_token=tokenizer.end_id)
    for (topic, prompt), new in zip(asked, replies):
        ended = bool(new) and new[-1] == tokenizer.end_id
        reply = tokenizer.decode(new).strip()
        rows.append({"topic": topic, "prompt": prompt, "reply": reply}
                    | judge(reply, ended, persona.topics[topic].keywords))
    model.train(was_training)
    return EvalResult(rows)


def main(argv: list[str] | None = None) -> int:
    from guppy.cli import ArgumentParser, add_run_flags, load_chosen_run, positive_int, run_main

    p = ArgumentParser(prog="guppy-eval", description="Persona eval of a trained run: pass rate per topic.")
    add_run_flags(p)
    p.add_argument("--prompts", type=positive_int, default=3, help="held-out prompts per topic (default 3)")
    p.add_argument("--show", type=int, default=0, help="print this many failing replies")
    args = p.parse_args(argv)

    def body():
        from guppy.run.reader import load_eval_data

        model, tokenizer, path, run = load_chosen_run(args)
        persona, chats = load_eval_data(run)
        result = persona_eval(model, tokenizer, persona, chats, per_topic=args.prompts)
        print(f"persona eval of {path}: {len(result.rows)} held-out prompts")
        for topic, rate in result.per_topic().items():
            print(f"  {topic:<18} {rate:6.0%}")
        print(f"pass rate: {result.pass_rate:.1%}")
        for r in [r for r in result.rows if not r["passed"]][:args.show]:
            failed = ", ".join(c for c in CHECKS if not r[c])
            print(f"  FAIL [{r['topic']}] {r['prompt']!r} -> {r['reply']!r} ({failed})")

    return run_main("guppy-eval", body)


if __name__ == "__main__":
    sys.exit(main())
