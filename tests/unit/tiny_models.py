"""Tiny random-weight models built from configs (no downloads), one per attention family attnscope supports."""

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
)

from attnscope.capture import ATTENTION_NAME, register_attention

VOCAB = 97


def llama_config() -> LlamaConfig:
    # 6 query heads over 2 key/value heads: grouped-query attention with 3 groups, as in SmolLM2 (9:3).
    return LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                       num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=1024)


def gpt2_config() -> GPT2Config:
    # scale_attn_by_inverse_layer_idx makes the scale differ per layer, which capture must record.
    return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=1024,
                      scale_attn_by_inverse_layer_idx=True)


def bert_config() -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=1024)


FAMILIES = {"llama": llama_config, "gpt2": gpt2_config, "bert": bert_config}
DECODERS = ("llama", "gpt2")


def build(family: str, attn_implementation: str = ATTENTION_NAME, seed: int = 0) -> torch.nn.Module:
    """The same random weights for a given (family, seed), whatever the attention implementation."""
    register_attention()
    torch.manual_seed(seed)
    config = FAMILIES[family]()
    auto = AutoModelForCausalLM if family in DECODERS else AutoModel
    return auto.from_config(config, attn_implementation=attn_implementation).eval()


class IdTokenizer:
    """What attnscope.tokens.from_ids needs of a tokenizer: a size and a display string per id."""

    vocab_size = VOCAB

    def __len__(self) -> int:
        return VOCAB

    def decode(self, ids) -> str:
        return f"t{ids[0]}"

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return f"t{token_id}"


def handle(family: str = "llama"):
    """attnscope.api.Model around a tiny model of `family`, with a tokenizer that only displays ids."""
    from attnscope.api import Model
    from attnscope.models import LoadedModel, ModelSpec

    module = build(family)
    config = module.config
    return Model(LoadedModel(spec=ModelSpec(f"tiny-{family}"), model=module, tokenizer=IdTokenizer(),
                             kind="encoder" if family == "bert" else "decoder", source="",
                             info={"n_layers": config.num_hidden_layers, "n_heads": config.num_attention_heads,
                                   "max_positions": 1024}))
