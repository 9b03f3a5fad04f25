"""Persona files: the shipped ones are valid and rich; bad ones fail in one precise line."""

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from guppy.data.persona import PersonaError, list_personas, load_persona

MINI = Path(__file__).parent / "data" / "mini.toml"
FISH_TOPICS = """greeting feeling hot cold food light water about_you confused tank noise night lonely
bye misc bubbles glass reflection breathing swimming colors taste plants filter algae snail
glass_tap scared excited bored curious happy tired outside cat rain seasons music visitors
children meaning_of_life time memory dreams size future past name weather sleep friends joke
fear love age smart poop doctor singing tv""".split()


def test_fish_has_all_sixty_topics():
    fish = load_persona("fish")
    assert list(fish.topics) == FISH_TOPICS


@pytest.mark.parametrize("name", list_personas())
def test_shipped_personas_compose_many_replies(name):
    p = load_persona(name)
    assert "fish" in list_personas() and len(list_personas()) >= 2
    for topic in p.topics:
        assert p.reply_space(topic) >= 1000, topic
        assert len(set(p.topics[topic].prompts)) >= 8, topic


@pytest.mark.parametrize("name", list_personas())
def test_shipped_prompt_templates_never_repeat(name):
    """A template in two topics would teach one prompt two answers, and one topic's held-out
    template would be another topic's train template."""
    seen = Counter(t for topic in load_persona(name).topics.values() for t in topic.prompts)
    assert not [t for t, n in seen.items() if n > 1]


def test_expansion_fills_nested_slots_and_counts_them():
    p = load_persona(MINI)
    rng = random.Random(0)
    texts = {p.expand("{adj}", rng) for _ in range(500)}
    assert all("{" not in t for t in texts)
    # adj = "{water} and {water}" (4*4) + "very {water}" (4) = 20 fillings, all reachable
    assert p.count("{adj}") == 20 and len(texts) == 20


def write(tmp_path, text):
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


BASE = MINI.read_text()


@pytest.mark.parametrize("edit, place, expected", [
    (lambda s: s.replace('name = "pebble"\n', ""), "persona.name", "missing key"),
    (lambda s: s.replace('keywords = ["river", "water"]\n', ""), "topics.water.keywords", "missing key"),
    (lambda s: s.replace("{moss}, i think.", "{mud}, i think."), "topics.meaning_of_life.reply[0][2]", "unknown pool {mud}"),
    (lambda s: s.replace('"i like {moss}."', '"i like {moss."'), "topics.greeting.reply[2][1]", "bad template syntax"),
    (lambda s: s.replace('"hi there"', '"{pick(hi, hey)}"'), "topics.greeting.prompts[1]", "bad template syntax"),
    (lambda s: s.replace('"hello.", "hi.", "oh, hello."', ""), "topics.greeting.reply[0]", "expected a non-empty list"),
    (lambda s: s + "\n[topics.empty]\n", "topics.empty.keywords", "missing key"),
    (lambda s: s.replace('"hello pebble"', '"Hello Pebble"'), "topics.greeting.prompts[0]", "expected lowercase"),
    (lambda s: s.replace('very {water}', 'very {adj}'), "pools.adj", "refers to itself"),
    (lambda s: s.replace("[topics.water]", "[topics.water]\nmood = 1"), "topics.water.mood", "unknown key"),
])
def test_bad_persona_fails_naming_file_place_and_expectation(tmp_path, edit, place, expected):
    path = write(tmp_path, edit(BASE))
    with pytest.raises(PersonaError) as e:
        load_persona(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {place}: "), msg
    assert expected in msg


def test_bad_toml_syntax_names_line(tmp_path):
    path = write(tmp_path, BASE.replace('[topics.water]', '[topics.water'))
    with pytest.raises(PersonaError, match=re.escape(str(path)) + r": bad TOML syntax: .*line \d+"):
        load_persona(path)


def test_missing_persona_lists_shipped_ones():
    with pytest.raises(PersonaError, match="no such persona; expected a .toml path or one of: .*fish"):
        load_persona("shark")
    with pytest.raises(PersonaError, match="cannot read persona file"):
        load_persona("/nonexistent/x.toml")
