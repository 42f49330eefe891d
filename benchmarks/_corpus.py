"""Generated text with a Zipf vocabulary, for the memory-notes and history benchmarks.

Word ``r`` (1-based rank) is drawn with probability ∝ ``1 / r**s``. The first ranks are
real English stop words ("the" is rank 1, so it lands in nearly every document); the
rest are made-up lowercase words built from syllables, so no query collides with an
FTS5 operator and every term's document frequency is known in advance:
``df(r, L) = 1 − (1 − p_r)**L`` for a document of ``L`` words. Queries are chosen by
target document frequency, and the benchmarks report the hit counts actually found.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

__all__ = ["ZipfCorpus"]

STOP_WORDS = (
    "the", "and", "to", "of", "a", "i", "you", "it", "in", "is", "that", "was", "for", "on",
    "we", "with", "they", "but", "be", "at", "have", "this", "not", "my", "so", "are", "do",
    "what", "he", "she",
)  # fmt: skip
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "s", "l", "x", "m")


def _made_up_words(count: int) -> list[str]:
    syllables = [o + v + c for o, v, c in itertools.product(_ONSETS, _VOWELS, _CODAS)]
    words: list[str] = []
    seen: set[str] = set(STOP_WORDS)
    for length in (2, 3, 4):
        for parts in itertools.product(syllables, repeat=length):
            word = "".join(parts)
            if word not in seen:
                seen.add(word)
                words.append(word)
                if len(words) == count:
                    return words
    raise ValueError(f"cannot make {count} distinct words")


class ZipfCorpus:
    """A seeded Zipf vocabulary and document generator.

    Args:
        vocabulary: number of distinct words.
        exponent: the Zipf exponent ``s``.
        seed: the generator's seed (same seed, same documents).
    """

    def __init__(self, *, vocabulary: int = 50_000, exponent: float = 1.0, seed: int = 8) -> None:
        made_up = _made_up_words(vocabulary - len(STOP_WORDS))
        # Shuffle the made-up words so rank is unrelated to spelling.
        order = np.random.default_rng(seed + 1).permutation(len(made_up))
        self.words: list[str] = list(STOP_WORDS) + [made_up[i] for i in order]
        ranks = np.arange(1, vocabulary + 1, dtype=np.float64)
        weights = ranks**-exponent
        self.probabilities = weights / weights.sum()
        self._cumulative = np.cumsum(self.probabilities)
        self._rng = np.random.default_rng(seed)
        self._vocab = np.array(self.words, dtype=object)

    def doc_frequency(self, rank: int, mean_words: float) -> float:
        """Expected share of documents of ``mean_words`` words that contain word ``rank``."""
        return float(1 - (1 - self.probabilities[rank - 1]) ** mean_words)

    def word_for_doc_frequency(self, target: float, mean_words: float) -> str:
        """The word whose expected document frequency is closest to ``target``."""
        p = 1 - (1 - target) ** (1 / mean_words)
        # probabilities decrease with rank: find the first rank at or below p.
        index = int(np.searchsorted(-self.probabilities, -p))
        index = min(max(index, len(STOP_WORDS)), len(self.words) - 1)
        return self.words[index]

    def documents(
        self, count: int, *, min_words: int, max_words: int, chunk: int = 10_000
    ) -> Iterator[str]:
        """``count`` documents of ``min_words..max_words`` words (uniform), in order."""
        made = 0
        while made < count:
            size = min(chunk, count - made)
            lengths = self._rng.integers(min_words, max_words + 1, size=size)
            draws = np.searchsorted(self._cumulative, self._rng.random(int(lengths.sum())))
            draws = np.minimum(draws, len(self.words) - 1)
            words = self._vocab[draws]
            position = 0
            for length in lengths:
                yield " ".join(words[position : position + length])
                position += length
            made += size
