"""Figures are pure and check their inputs; tokens display literally."""

import numpy as np
import pytest

from attnscope.figures import maps as figures
from attnscope.tokens import tokenize


def test_head_heatmap_labels_tokens_and_escapes_html():
    tokens = ["<b>", "a&b", "c"]
    values = np.tril(np.full((3, 3), 1 / 3))
    figure = figures.head_heatmap(values, tokens=tokens, block=1, title="L0 H0")
    trace = figure.data[0]
    assert list(trace.x) == ["0:&lt;b&gt;", "1:a&amp;b", "2:c"]
    assert list(trace.y) == list(trace.x)


def test_head_heatmap_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="labels give"):
        figures.head_heatmap(np.zeros((3, 4)), tokens=["a", "b", "c"], block=1, title="t")


def test_pooled_heatmap_sends_only_the_tiles():
    values = np.random.default_rng(0).random((16, 16))
    figure = figures.head_heatmap(values, tokens=[str(i) for i in range(4096)], block=256, title="big")
    assert np.asarray(figure.data[0].z).shape == (16, 16)
    assert len(figure.data[0].x) == 16  # one label per tile, naming its keys' range and first and last tokens
    assert figure.data[0].x[0] == "keys 0-255: 0 … 255" and figure.data[0].x[-1] == "keys 3840-4095: 3840 … 4095"


def _thumbs(entropies):
    return [figures.Thumbnail(layer=0, head=h, values=np.eye(4), entropy=e, max_weight=0.5)
            for h, e in enumerate(entropies)]


def test_head_grid_carries_layer_and_head_and_sorts_by_entropy():
    figure = figures.head_grid(_thumbs([2.0, 0.5, 1.0]), n_cols=2, sort_by_entropy=True, title="grid")
    points = next(t for t in figure.data if t.name == "heads")
    assert [tuple(c) for c in points.customdata] == [(0, 1), (0, 2), (0, 0)]
    unsorted = figures.head_grid(_thumbs([2.0, 0.5, 1.0]), n_cols=2, sort_by_entropy=False, title="grid")
    cells = next(t for t in unsorted.data if t.name == "heads").customdata
    assert [tuple(c) for c in cells] == [(0, 0), (0, 1), (0, 2)]


def test_query_bars_keep_the_heaviest_keys_in_text_order():
    weights = np.array([0.5, 0.05, 0.3, 0.05, 0.1])
    figure = figures.query_bars(weights, tokens=list("abcde"), query=4, top_k=3, title="t")
    assert list(figure.data[0].x) == ["0:a", "2:c", "4:e"]
    with pytest.raises(ValueError):
        figures.query_bars(weights, tokens=list("abc"), query=2, top_k=3, title="t")


class _CharTokenizer:
    """A stand-in tokenizer: one token per character, id = code point, no special tokens."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def convert_ids_to_tokens(self, token_id):
        return f"<{token_id}>"


def test_tokenize_makes_whitespace_visible_and_truncates_visibly():
    tokens = tokenize(_CharTokenizer(), "a b\nc", max_tokens=4)
    assert tokens.strings == ("a", "␣", "b", "↵") and tokens.truncated and tokens.n_text_tokens == 5
    with pytest.raises(ValueError, match="no tokens"):
        tokenize(_CharTokenizer(), "")


def test_keep_the_end_of_a_long_text():
    class Words:
        """A whitespace tokenizer: enough to check which ids are kept."""

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [int(w[1:]) for w in text.split()]}

        def decode(self, ids):
            return f"w{ids[0]}"

        def convert_ids_to_tokens(self, token_id):
            return f"w{token_id}"

    text = " ".join(f"w{i}" for i in range(10))
    assert tokenize(Words(), text, max_tokens=3).ids == (0, 1, 2)
    end = tokenize(Words(), text, max_tokens=3, keep="end")
    assert end.ids == (7, 8, 9) and end.truncated and end.n_text_tokens == 10
    with pytest.raises(ValueError, match="keep must be"):
        tokenize(Words(), text, max_tokens=3, keep="middle")
