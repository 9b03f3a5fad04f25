"""`guppy-data` end to end, and its handling of bad input."""

import subprocess
import sys
from pathlib import Path

MINI = Path(__file__).parent / "data" / "mini.toml"


def run(*args, cache):
    return subprocess.run([sys.executable, "-m", "guppy.data.cli", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True, timeout=120)


def test_prints_stats_and_samples(tmp_path):
    r = run("--persona", str(MINI), "--n-chats", "300", "--vocab-size", "400", "--samples", "2", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    for key in ("chats_train", "unique_replies_per_topic_min", "eval_pairs_in_train", "vocab_used", "padding_16x4"):
        assert key in r.stdout
    assert r.stdout.count("pebble: ") == 2


def test_bad_flag_is_one_line(tmp_path):
    r = run("--n-chats", "-5", cache=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "--n-chats" in r.stderr and "positive integer" in r.stderr


def test_bad_persona_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(MINI.read_text().replace("{moss}, i think.", "{mud}, i think."))
    for persona, expected in ((bad, "unknown pool {mud}"), ("shark", "no such persona")):
        r = run("--persona", str(persona), cache=tmp_path)
        assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
        assert expected in r.stderr and r.stdout == ""
