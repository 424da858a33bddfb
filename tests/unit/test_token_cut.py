"""core.tokens: a text is cut by characters before tokenizing, and the cut changes no kept token."""

import pytest

from attnscope.tokens import CHARS_PER_TOKEN, cut_text, max_chars, tokenize


class Words:
    """A whitespace tokenizer with BERT-like special tokens: 0 opens the text, 1 closes it, word wN is id N + 10,
    anything else is 2 (unknown)."""

    def __init__(self):
        self.seen = []  # the length of every text it was asked to tokenize

    def __call__(self, text, add_special_tokens=True):
        self.seen.append(len(text))
        words = [int(w[1:]) + 10 if w[0] == "w" and w[1:].isdigit() else 2 for w in text.split()]
        return {"input_ids": [0, *words, 1] if add_special_tokens else words}

    def decode(self, ids):
        return f"w{ids[0] - 10}"

    def convert_ids_to_tokens(self, token_id):
        return f"w{token_id}"


def _text(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_a_huge_text_is_cut_by_characters_before_tokenizing():
    tokenizer = Words()
    text = _text(2_000_000)  # about 15 MB
    tokens = tokenize(tokenizer, text, max_tokens=100)
    assert max(tokenizer.seen) == 100 * CHARS_PER_TOKEN
    assert tokens.ids == tuple([0, *range(10, 109)]) and tokens.truncated and tokens.chars_cut
    end = tokenize(tokenizer, text, max_tokens=100, keep="end")
    assert max(tokenizer.seen) == 100 * CHARS_PER_TOKEN
    assert end.ids == tuple([*range(2_000_000 + 10 - 99, 2_000_000 + 10), 1]) and end.chars_cut


@pytest.mark.parametrize("keep", ["start", "end"])
def test_the_character_cut_keeps_what_the_token_cut_keeps(keep):
    """Where the text is long enough for the character cut to bite, the ids equal those of the whole text."""
    text = _text(5000)
    whole = Words()(text)["input_ids"]
    tokens = tokenize(Words(), text, max_tokens=64, keep=keep)
    assert tokens.chars_cut and len(tokens) == 64
    assert list(tokens.ids) == (whole[:64] if keep == "start" else whole[-64:])


def test_a_word_split_by_the_cut_is_dropped_and_no_end_token_is_invented():
    """Words of 40 characters: 16 tokens' worth of characters hold only 6 whole words."""
    words = [f"w{i:039d}" for i in range(50)]
    tokens = tokenize(Words(), " ".join(words), max_tokens=16)
    assert tokens.chars_cut and tokens.truncated
    assert tokens.ids == (0, *range(10, 16))  # the start token and 6 whole words: no split word 7, no end token
    end = tokenize(Words(), " ".join(words), max_tokens=16, keep="end")
    assert end.ids == (*range(10 + 44, 10 + 50), 1)  # no start token, no split word: the last 6 and the end token


def test_short_texts_are_not_cut():
    assert cut_text("abc", 8) == "abc" and max_chars(8) == 8 * CHARS_PER_TOKEN
    tokens = tokenize(Words(), _text(5), max_tokens=64)
    assert not tokens.chars_cut and not tokens.truncated and len(tokens) == 7


def test_a_cut_text_of_unknown_tokens_keeps_them():
    """Tokens the model cannot name (a 16,384-character word is one [UNK] for BERT) are tokens like any other."""
    tokens = tokenize(Words(), "x" * 50_000, max_tokens=16)
    assert tokens.ids == (0,) and tokens.chars_cut  # the one (split) word dropped, the start token kept
    spaced = tokenize(Words(), "x " * 50_000, max_tokens=16)
    assert spaced.ids == (0, *[2] * 15) and spaced.chars_cut
