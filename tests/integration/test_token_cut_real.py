"""The character cut before tokenizing on the packaged models' real tokenizers: on real text it keeps exactly the
tokens that tokenizing the whole text and then cutting would keep."""

import pytest

from core.analyses.collapse import builtin_text
from core.tokens import tokenize

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
