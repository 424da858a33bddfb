"""Text -> token ids and the strings shown for each token.

Display strings come from decoding each id alone, so byte-level BPE tokens show their real text (" Paris", not
"ĠParis"); whitespace is made visible (space -> "␣", newline -> "↵", tab -> "⇥") because an attention map labelled
with blanks is unreadable, and a token that decodes to nothing or to a broken UTF-8 piece falls back to the
tokenizer's own token string. Strings are never HTML-escaped here: escaping is the job of whatever renders them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "⏎"})


@dataclass(frozen=True)
class Tokens:
    ids: tuple[int, ...]  # token ids fed to the model, special tokens included
    strings: tuple[str, ...]  # one display string per id, whitespace made visible
    n_text_tokens: int  # tokens the whole text would take before truncation
    truncated: bool  # True when `ids` holds only max_tokens of the text (the first ones, or the last: see Cut)

    def __len__(self) -> int:
        return len(self.ids)

    def as_tensor(self) -> torch.Tensor:
        """(1, T) int64 input ids."""
        return torch.tensor([self.ids], dtype=torch.long)

    def labels(self) -> list[str]:
        """Unique axis labels "position:token" (plotly merges equal category labels)."""
        return [f"{position}:{text}" for position, text in enumerate(self.strings)]


@dataclass(frozen=True)
class Cut:
    """How much of a text is analysed: at most max_tokens tokens, from its start or from its end."""

    max_tokens: int
    keep: str = "start"  # "start" or "end"


def display_string(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    if not text or "\ufffd" in text:
        text = tokenizer.convert_ids_to_tokens(token_id)
    return str(text).translate(_VISIBLE_WHITESPACE)


def tokenize(tokenizer, text: str, *, max_tokens: int | None = None, keep: str = "start") -> Tokens:
    """Tokenize `text` with the tokenizer's own special tokens, keeping at most `max_tokens`: the first ones, or with
    keep="end" the last ones (then the model does not see the tokenizer's start token).

    Raises:
        ValueError: if the text yields no tokens at all.
    """
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ValueError("The text produced no tokens: type or paste some text.")
    n_text_tokens = len(ids)
    truncated = max_tokens is not None and n_text_tokens > max_tokens
    if truncated:
        if keep not in ("start", "end"):
            raise ValueError(f"keep must be 'start' or 'end'; got {keep!r}.")
        ids = ids[:max_tokens] if keep == "start" else ids[-max_tokens:]
    return Tokens(
        ids=tuple(int(i) for i in ids),
        strings=tuple(display_string(tokenizer, int(i)) for i in ids),
        n_text_tokens=n_text_tokens,
        truncated=truncated,
    )
