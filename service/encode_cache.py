"""A bounded cache of query encodings: normalised text -> its sentence and word features.

Search logs repeat themselves (a few thousand queries make most of the traffic), and on a CPU the
text encoder is most of a query's time. The key is the text as the tokenizer sees it (lower case,
runs of whitespace as one space), so texts that tokenise alike share an entry. A query's features
do not depend on the batch it was encoded in (the text transformer is causal and tokens are cut to
the longest query, not padded into it), so a cached entry equals a fresh encoding. One cache per
engine, and an engine serves one model: a new model means a new engine and an empty cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

from model.features import TextFeatures


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


class EncodeCache:
    def __init__(self, entries: int) -> None:
        self.entries = entries
        # sentence [D], words [L, D], word mask [L], cut after the last real word
        self._items: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def encode(self, texts: Sequence[str], encode: Callable[[list[str]], TextFeatures]) -> TextFeatures:
        """Features of `texts`, encoding only those not cached (in one call to `encode`)."""
        if self.entries <= 0:
            return encode(list(texts))
        keys = [normalise(t) for t in texts]
        with self._lock:
            found = {k: self._items[k] for k in dict.fromkeys(keys) if k in self._items}
            for k in found:
                self._items.move_to_end(k)
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            fresh = encode(missing)
            # a row's last real position (the mask leaves out the start token, so it is not a prefix count)
            positions = torch.arange(fresh.word_mask.shape[1], device=fresh.word_mask.device)
            ends = (fresh.word_mask * (positions + 1)).amax(-1).tolist()
            new = {
                k: (fresh.sentence[i], fresh.words[i, : ends[i]], fresh.word_mask[i, : ends[i]])
                for i, k in enumerate(missing)
            }
            found.update(new)
            with self._lock:
                self._items.update(new)
                while len(self._items) > self.entries:
                    self._items.popitem(last=False)
        with self._lock:
            self.misses += sum(k in missing for k in keys)
            self.hits += len(keys) - sum(k in missing for k in keys)
        return _stack([found[k] for k in keys])


def _stack(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> TextFeatures:
    """One batch from per-query (sentence, words, mask), padded to the longest."""
    width = max(w.shape[0] for _, w, _ in rows)
    sentence = torch.stack([s for s, _, _ in rows])
    words = sentence.new_zeros((len(rows), width, sentence.shape[-1]))
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=sentence.device)
    for i, (_, w, m) in enumerate(rows):
        words[i, : w.shape[0]] = w
        mask[i, : m.shape[0]] = m
    return TextFeatures(sentence, words, mask)
