"""Transforms of training batches for the intervention study: masculine pronouns swapped for
feminine ones, whole words only, in a chosen share of the source documents.

The swap works on tokens, on the batch the model is about to train on: he -> she,
him -> her, his -> her, himself -> herself, keeping case (He -> She, HIS -> HER). A token
sequence is a word when its first token starts with a space or punctuation (or follows one)
and the token after it does not continue it: " he" + "ard" is " heard", and stays. The word
is read from the tokens' text, so a pronoun that the tokenizer splits ("H" + "e" at the start
of a line) is found as well as one that is a single token. Text is compared after decoding:
a byte-level BPE token's "Ġ" is a space there, not a letter.

Where a swap changes the number of tokens, the sample keeps exactly seq_len + 1 tokens: one
that grows is cut at its end; one that shrinks takes the next tokens of the document stream
(as they stand, untransformed), and end-of-document tokens past the stream's end. In the
built-in vocabulary every swap is one token for one.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

SWAPS = {"he": "she", "him": "her", "his": "her", "himself": "herself"}
MASCULINE = re.compile(r"(?<![^\W_])(he|him|his|himself)(?![^\W_])", re.IGNORECASE)
"""Whole-word masculine pronouns in text: the independent count a swap is checked against."""


def swap_word(word: str) -> str | None:
    """The feminine form of a masculine pronoun in the same case, or None."""
    target = SWAPS.get(word.lower())
    if target is None:
        return None
    if len(word) > 1 and word.isupper():
        return target.upper()
    return target.capitalize() if word[0].isupper() else target


def swap_text(text: str) -> str:
    """The swap on plain text (what the token-level swap must agree with)."""
    return MASCULINE.sub(lambda m: swap_word(m.group(0)), text)


@functools.lru_cache(maxsize=4)
def _token_texts(tokenizer_json: str) -> list[str]:
    tok = Tokenizer.from_str(tokenizer_json)
    return [tok.decode([i]) for i in range(tok.get_vocab_size())]


def _word_char(c: str) -> bool:
    return c.isalnum()


@dataclass
class Swapped:
    """A transformed row, and what changed."""

    row: np.ndarray
    swapped: int
    """Words swapped."""
    pronouns: int
    """Masculine pronouns in the eligible text, counted on the decoded text."""


class PronounSwap:
    """The swap for one tokenizer."""

    name = "swap-pronouns"

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.texts = _token_texts(tokenizer.to_str())
        self.eod = tokenizer.token_to_id("<|endoftext|>") or 0

    def _text(self, token: int | None) -> str:
        return "" if token is None or token < 0 else self.texts[int(token)]

    def words(self, row: list[int], before: int | None, after: int | None) -> list[tuple]:
        """(start, end) token spans of the whole words of `row` (a word cut by the row's edge,
        which `before` and `after` tell, is not whole)."""
        spans, start = [], 0
        previous = self._text(before)
        for i, token in enumerate(row):
            text = self._text(token)
            joins = text[:1] != "" and _word_char(text[0]) and previous[-1:] != "" and \
                _word_char(previous[-1])
            if i > 0 and not joins:
                spans.append((start, i))
                start = i
            elif i == 0 and joins:
                start = -1  # continues a word of the tokens before the row
            previous = text
        spans.append((start, len(row)))
        last_start, last_end = spans[-1]
        following = self._text(after)
        if following[:1] != "" and _word_char(following[0]) and previous[-1:] != "" and \
                _word_char(previous[-1]):
            spans[-1] = (-1, last_end)  # continues into the tokens after the row
        return [(a, b) for a, b in spans if a >= 0]

    def apply(self, row: np.ndarray, eligible: np.ndarray | None = None,
              before: int | None = None, following: np.ndarray | None = None) -> Swapped:
        """Swap the whole-word masculine pronouns of `row` whose tokens are all `eligible`
        (all, by default). `before` is the stream's token just before the row, `following`
        its next tokens (for the word cut at the end, and to refill a row that shrinks)."""
        tokens = row.tolist()
        eligible = np.ones(len(tokens), bool) if eligible is None else eligible
        after = int(following[0]) if following is not None and len(following) else None
        pieces, cursor, swapped = [], 0, 0
        for a, b in self.words(tokens, before, after):
            while a > cursor and self._text(tokens[a - 1]).isspace():
                a -= 1  # a space spelled as a token of its own goes with the word
            if not eligible[a:b].all():
                continue
            text = "".join(self._text(t) for t in tokens[a:b])
            word = text.lstrip()
            target = swap_word(word)
            if target is None:
                continue
            replacement = self.tokenizer.encode(text[:len(text) - len(word)] + target,
                                                add_special_tokens=False).ids
            pieces += [tokens[cursor:a], replacement]
            cursor, swapped = b, swapped + 1
        if not swapped:
            return Swapped(row, 0, self.count(tokens, eligible))
        new = [t for piece in [*pieces, tokens[cursor:]] for t in piece]
        if len(new) < len(tokens):  # refill from the stream, as it stands; past its end, EOD
            refill = [] if following is None else following[: len(tokens) - len(new)].tolist()
            new += refill + [self.eod] * (len(tokens) - len(new) - len(refill))
        out = np.asarray(new[: len(tokens)], dtype=row.dtype)
        return Swapped(out, swapped, self.count(tokens, eligible))

    def count(self, tokens: list[int], eligible: np.ndarray) -> int:
        """Masculine pronouns in the eligible runs of tokens, found in the decoded text."""
        total, run = 0, []
        for token, ok in zip([*tokens, None], [*eligible.tolist(), False], strict=True):
            if ok:
                run.append(token)
            elif run:
                total += len(MASCULINE.findall(self.tokenizer.decode(run)))
                run = []
        return total


TRANSFORMS = {PronounSwap.name: PronounSwap}
