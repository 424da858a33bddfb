"""The character cut before tokenizing on the packaged models' real tokenizers: on real text it keeps exactly the
tokens that tokenizing the whole text and then cutting would keep."""

import pytest

from attnscope.analyses.collapse import builtin_text
from attnscope.tokens import tokenize

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("keep", ["start", "end"])
@pytest.mark.parametrize("max_tokens", [64, 1024])
def test_real_tokenizers_keep_the_same_tokens(smollm2, minilm, keep, max_tokens):
    document = builtin_text()[:400_000]  # the Python reference manual's topics: prose, code, tables
    for loaded in (smollm2, minilm):
        whole = tokenize(loaded.tokenizer, document, max_tokens=None)
        cut = tokenize(loaded.tokenizer, document, max_tokens=max_tokens, keep=keep)
        assert cut.chars_cut and cut.truncated and len(cut) == max_tokens
        expected = whole.ids[:max_tokens] if keep == "start" else whole.ids[-max_tokens:]
        if keep == "end" and loaded is minilm:
            assert cut.ids[-1] == loaded.tokenizer.sep_token_id
        assert cut.ids == expected, loaded.spec.name


def test_a_huge_word_is_cut_to_whole_tokens_or_refused_in_one_sentence(smollm2, minilm):
    """16,384 characters without a space: BERT's word is one unknown token; a byte-level BPE splits it."""
    text = "x" * 16_384 * 3
    for keep in ("start", "end"):
        bert = tokenize(minilm.tokenizer, text, max_tokens=512, keep=keep)
        assert len(bert) >= 1 and bert.chars_cut
        assert set(bert.ids) <= {minilm.tokenizer.cls_token_id, minilm.tokenizer.sep_token_id}
        bpe = tokenize(smollm2.tokenizer, text, max_tokens=1024, keep=keep)
        assert 0 < len(bpe) <= 1024 and bpe.chars_cut
        assert set(bpe.ids) <= set(tokenize(smollm2.tokenizer, "x" * 5000).ids)
