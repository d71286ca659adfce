"""Captions of the synthetic corpus: phrases for events, training captions, evaluation captions.

A caption names one event, two consecutive events in order, or every event; `_matches` says which
event sequences satisfy a parsed caption, so an evaluation caption can be chosen that names its
video alone (see model/data/synth.py).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

# motion -> (finite verb phrase, -ing phrase): two grammatical forms of the same motion.
MOTIONS = {m: (f"moves {m}", f"moving {m}") for m in ("left", "right", "up", "down")} | {
    "grow": ("grows", "growing"),
    "shrink": ("shrinks", "shrinking"),
    "still": ("stays still", "staying still"),
}


def _phrase(e: dict[str, Any], color: bool, motion: bool, form: str) -> str:
    """'a red circle moves left' (finite), 'a red circle moving left' (ing), '... is moving left' (is)."""
    words = f"{e['color']} {e['shape']}" if color else e["shape"]
    noun = f"{'an' if words[0] in 'aeiou' else 'a'} {words}"
    if not motion:
        return noun if form == "ing" else f"{noun} appears"
    finite, ing = MOTIONS[e["motion"]]
    return {"finite": f"{noun} {finite}", "ing": f"{noun} {ing}", "is": f"{noun} is {ing}"}[form]


def _caption(rng: np.random.Generator, events: list[dict[str, Any]], kind: str) -> tuple[str, list, list]:
    """(caption, spec, event indices); spec lists, per described consecutive event, the attributes named."""
    if kind == "full":
        spec = [{a: e[a] for a in ("shape", "color", "motion")} for e in events]
        text = " then ".join(_phrase(e, True, True, "finite") for e in events)
        return text, spec, list(range(len(events)))
    length = 1 if kind == "one" else 2
    start = int(rng.integers(len(events) - length + 1))
    idx = list(range(start, start + length))
    spec, flags = [], []
    for i in idx:
        color, motion = bool(rng.random() < 0.85), bool(rng.random() < 0.8)
        color = color or not motion  # a bare shape says too little
        part = {"shape": events[i]["shape"]}
        part |= {"color": events[i]["color"]} if color else {}
        part |= {"motion": events[i]["motion"]} if motion else {}
        spec.append(part)
        flags.append((color, motion))
    if length == 2:
        a, b = (_phrase(events[i], c, m, "finite") for i, (c, m) in zip(idx, flags, strict=True))
        # "b after a" names the later event first: order has to be read from the words, not their position.
        templates = ["{a} then {b}", "first {a} and then {b}", "{a} and after that {b}", "{b} after {a}"]
        t = templates[int(rng.choice(4, p=[0.35, 0.25, 0.25, 0.15]))]
        return t.format(a=a, b=b), spec, idx
    e, (color, motion) = events[idx[0]], flags[0]
    bg = ""
    if rng.random() < 0.3:
        bg = f" on a {e['background']} background"
        spec[0]["background"] = e["background"]
    templates = ["{f}{bg}", "there is {i}{bg}", "the video shows {i}{bg}", "we see {i}{bg}"]
    templates += ["{is_}{bg}"] if motion else []
    t = templates[int(rng.integers(len(templates)))]
    forms = {k: _phrase(e, color, motion, k) for k in ("finite", "ing", "is")}
    return t.format(f=forms["finite"], i=forms["ing"], is_=forms["is"], bg=bg), spec, idx


def _matches(spec: list[dict[str, str]], events: list[dict[str, Any]]) -> bool:
    """True when the described events occur consecutively, in order, in `events`."""
    n = len(spec)
    return any(
        all(events[s + k][a] == v for k, part in enumerate(spec) for a, v in part.items())
        for s in range(len(events) - n + 1)
    )


def _captions(rng: np.random.Generator, events: list[dict[str, Any]]) -> list[tuple[str, list, list]]:
    out: dict[str, tuple[str, list, list]] = {}
    wanted = int(rng.integers(5, 11))
    for _ in range(wanted * 20):
        if len(out) >= wanted:
            break
        kind = ("one", "two", "full")[int(rng.choice(3, p=[0.55, 0.3, 0.15]))]
        if kind == "two" and len(events) < 2:
            kind = "one"
        cap = _caption(rng, events, kind)
        out.setdefault(cap[0], cap)
    return list(out.values())


def _eval_caption(
    rng: np.random.Generator,
    own: list[dict[str, Any]],
    captions: list[tuple],
    others: list[list[dict]],
    taken: frozenset[str] = frozenset(),
) -> tuple[str, list, list] | None:
    """A caption about part of `own` (one event, or two of three or more) that no video of `others`
    satisfies and that is not in `taken`: a single event more often than a pair. The video's own captions
    are tried first, then fresh ones; the full caption is the fallback, unique by construction (see
    _Registry); None when even that is taken."""
    kinds = ["one", "two"] if rng.random() < 0.6 else ["two", "one"]
    for kind in kinds:
        length = 1 if kind == "one" else 2
        if length >= len(own):
            continue
        mine = [c for c in captions if len(c[1]) == length]
        fresh = (_caption(rng, own, kind) for _ in range(40))
        for cap in itertools.chain((mine[k] for k in rng.permutation(len(mine))), fresh):
            if cap[0] not in taken and not any(_matches(cap[1], o) for o in others):
                return cap
    full = _caption(rng, own, "full")
    return None if full[0] in taken else full
