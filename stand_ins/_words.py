"""What several stand-ins share: invented names, a table of invented countries and their capitals
(the facts FineTome's, Dolly's, Alpaca's and the support desk's stand-ins ask about), and small word lists."""

from __future__ import annotations

import random

_SYLLABLES = ["ka", "lor", "ven", "mi", "tas", "dor", "el", "quin", "ra", "bo", "sul", "ny", "pex", "ta", "gri"]
_WORDS = ["apple", "river", "stone", "cloud", "maple", "copper", "lantern", "violet", "harbor", "ember",
          "meadow", "falcon", "canyon", "willow", "marble", "thunder", "pepper", "orchid", "glacier", "saddle"]
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_ITEMS = ["lamp", "kettle", "jacket", "toaster", "umbrella", "backpack", "radio", "shirt"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _world(seed: int) -> dict[str, str]:
    """A fixed table of invented countries and capitals: facts to memorise."""
    rng = random.Random(seed * 7919 + 1)
    world = {}
    while len(world) < 24:
        world[_name(rng, 3)] = _name(rng, 2)
    return world


def _cap(word: str) -> str:
    return word[0].upper() + word[1:]
