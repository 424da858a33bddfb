"""Text -> token ids and the strings shown for each token.

Display strings come from decoding each id alone, so byte-level BPE tokens show their real text (" Paris", not
"ĠParis"); whitespace is made visible (space -> "␣", newline -> "↵", tab -> "⇥") because an attention map labelled
with blanks is unreadable, and a token that decodes to nothing or to a broken UTF-8 piece falls back to the
tokenizer's own token string. Strings are never HTML-escaped here: escaping is the job of whatever renders them.

A text longer than CHARS_PER_TOKEN characters per kept token is cut by characters before it is tokenized (its start
or its end, whichever part is analysed), so a 10 MB paste costs no more than the part that can be analysed. No
tokenizer in use averages that many characters per token on real text, so the cut only removes text the token cut
would remove anyway; the one token the character cut may split in two is dropped.

`find` searches the text the display strings spell (whitespace markers read back as the whitespace they stand for)
for a needle a visitor types, case-insensitively, and returns the token spans it covers. Its limits: a tokenizer
whose tokens decode without their spaces when decoded alone (WordPiece, some SentencePiece tokenizers) spells the text
without those spaces, so there only needles without spaces are found; a token shown by its tokenizer string (a broken
UTF-8 piece) matches that string, not the text.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch

_VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "⏎"})
# What find reads each visible-whitespace marker back as (and SentencePiece's ▁ as a space)
_READ_WHITESPACE = {ord(shown): blank for blank, shown in _VISIBLE_WHITESPACE.items()} | {ord("▁"): ord(" ")}
CHARS_PER_TOKEN = 16  # characters kept per analysed token when a text is cut before tokenizing
MAX_NEEDLE_CHARS = 200  # longest text `find` searches for
MAX_MATCHES = 100  # most matches `find` returns


@dataclass(frozen=True)
class Tokens:
    ids: tuple[int, ...]  # token ids fed to the model, special tokens included
    strings: tuple[str, ...]  # one display string per id, whitespace made visible
    n_text_tokens: int  # tokens of the text before truncation (of its kept characters when chars_cut)
    truncated: bool  # True when `ids` holds only part of the text (its first tokens, or its last: see Cut)
    chars_cut: bool = False  # True when the text was first cut by characters: n_text_tokens is then a lower bound

    def __len__(self) -> int:
        return len(self.ids)

    def as_tensor(self) -> torch.Tensor:
        """(1, T) int64 input ids."""
        return torch.tensor([self.ids], dtype=torch.long)


@dataclass(frozen=True)
class Cut:
    """How much of a text is analysed: at most max_tokens tokens, from its start or from its end."""

    max_tokens: int
    keep: str = "start"  # "start" or "end"


def cut_rule(requested: int, *, keep: str = "start", max_positions: int | None = None,
             ceiling: int | None = None) -> Cut:
    """The one rule for how many tokens a model run reads: what was asked for, at most a deployment's `ceiling`
    (hosted mode's token limit) and at most the model's positions. Models.Model.cut and hosting.Policy.cut call it."""
    limits = [int(requested)] + [int(n) for n in (ceiling, max_positions) if n]
    return Cut(max_tokens=max(1, min(limits)), keep=keep)


def display_string(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    if not text or "\ufffd" in text:
        text = tokenizer.convert_ids_to_tokens(token_id)
    return str(text).translate(_VISIBLE_WHITESPACE)


def max_chars(max_tokens: int) -> int:
    """Characters of a text kept before tokenizing when at most `max_tokens` tokens are analysed."""
    return max_tokens * CHARS_PER_TOKEN


def cut_text(text: str, max_tokens: int, keep: str = "start") -> str:
    """The part of `text` that tokenizing for `max_tokens` tokens reads: its first or last max_chars characters."""
    limit = max_chars(max_tokens)
    if len(text) <= limit:
        return text
    return text[:limit] if keep == "start" else text[-limit:]


def tokenize(tokenizer, text: str, *, max_tokens: int | None = None, keep: str = "start") -> Tokens:
    """Tokenize `text` with the tokenizer's own special tokens, keeping at most `max_tokens`: the first ones, or with
    keep="end" the last ones (then the model does not see the tokenizer's start token). A text over
    max_chars(max_tokens) characters is cut by characters first.

    Raises:
        ValueError: if the text yields no tokens at all, or keep is neither "start" nor "end".
    """
    if keep not in ("start", "end"):
        raise ValueError(f"keep must be 'start' or 'end'; got {keep!r}.")
    chars_cut = max_tokens is not None and len(text) > max_chars(max_tokens)
    if chars_cut:
        ids = _ids_of_cut_text(tokenizer, cut_text(text, max_tokens, keep), max_tokens, keep)
    else:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids and chars_cut:
        raise ValueError(f"The {'first' if keep == 'start' else 'last'} {max_chars(max_tokens):,} characters of the "
                         "text, the part analysed, hold no whole token: break the text into words or raise Max "
                         "tokens.")
    if not ids:
        raise ValueError("The text produced no tokens: type or paste some text.")
    n_text_tokens = len(ids)
    truncated = chars_cut or (max_tokens is not None and n_text_tokens > max_tokens)
    if max_tokens is not None and n_text_tokens > max_tokens:
        ids = ids[:max_tokens] if keep == "start" else ids[-max_tokens:]
    return Tokens(
        ids=tuple(int(i) for i in ids),
        strings=tuple(display_string(tokenizer, int(i)) for i in ids),
        n_text_tokens=n_text_tokens,
        truncated=truncated,
        chars_cut=chars_cut,
    )


def _added_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (e.g. [CLS] and [SEP], or a start-of-text token)."""
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


def _ids_of_cut_text(tokenizer, part: str, max_tokens: int, keep: str) -> list[int]:
    """Ids of the first (keep="start") or last part of a longer text: the tokenizer's start tokens only where the text
    really starts, its end tokens only where it really ends, and without the token at the cut, which may be split,
    when the cut lies within the tokens that are kept."""
    before, after = _added_tokens(tokenizer)
    ids = list(tokenizer(part, add_special_tokens=False)["input_ids"])
    if len(ids) < max_tokens + 2:
        ids = ids[:-1] if keep == "start" else ids[1:]
    return before + ids if keep == "start" else ids + after


def from_ids(tokenizer, ids, *, max_tokens: int | None = None, keep: str = "start") -> Tokens:
    """Tokens for ids the caller already has (e.g. from their own tokenization), kept as given but for the cut."""
    if keep not in ("start", "end"):
        raise ValueError(f"keep must be 'start' or 'end'; got {keep!r}.")
    ids = [int(i) for i in ids]
    if not ids:
        raise ValueError("No token ids were given.")
    vocab = getattr(tokenizer, "vocab_size", None)
    bad = [i for i in ids if i < 0 or (vocab is not None and i >= len(tokenizer))]
    if bad:
        raise ValueError(f"Token ids {bad[:5]} are outside this tokenizer's vocabulary of {len(tokenizer)}.")
    n_text_tokens = len(ids)
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[:max_tokens] if keep == "start" else ids[-max_tokens:]
    return Tokens(ids=tuple(ids), strings=tuple(display_string(tokenizer, i) for i in ids),
                  n_text_tokens=n_text_tokens, truncated=len(ids) < n_text_tokens)


def find(tokens: Tokens | Sequence[str], needle: str, *, max_matches: int = MAX_MATCHES) -> list[tuple[int, int]]:
    """Where `needle` occurs in the text the tokens spell: (first, last) token positions of each occurrence, in order.

    Case-insensitive (str.casefold); a needle spanning several tokens matches across them; whitespace markers in the
    display strings (␣ ↵ ⇥ ⏎) stand for the whitespace they show, in the tokens and in the needle alike. At most one
    match starts in each token, and the search stops after `max_matches` matches: whatever a visitor types, the work
    is at most max_matches + 1 scans of the text.

    Args:
        tokens: Tokens, or their display strings.
        needle: the text to find, 1 to MAX_NEEDLE_CHARS characters.
        max_matches: most spans returned.

    Returns:
        [(first, last), ...] inclusive token positions, at most max_matches of them; [] when there is none.
    """
    strings = tokens.strings if isinstance(tokens, Tokens) else tuple(tokens)
    if not needle:
        raise ValueError("The search text is empty: type a word or a phrase to find.")
    if len(needle) > MAX_NEEDLE_CHARS:
        raise ValueError(f"The search text has {len(needle):,} characters; search for at most {MAX_NEEDLE_CHARS}.")
    pieces = [str(s).translate(_READ_WHITESPACE).casefold() for s in strings]
    starts = [0, *accumulate(len(piece) for piece in pieces)]  # character offset of each token, then the end
    text, wanted = "".join(pieces), needle.translate(_READ_WHITESPACE).casefold()
    matches: list[tuple[int, int]] = []
    at = 0
    while len(matches) < max_matches:
        found = text.find(wanted, at)
        if found < 0:
            break
        first = bisect_right(starts, found) - 1
        last = bisect_right(starts, found + len(wanted) - 1) - 1
        matches.append((first, last))
        at = starts[first + 1]  # the next match starts in a later token
    return matches
