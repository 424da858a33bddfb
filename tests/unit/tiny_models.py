"""Tiny random-weight models built from configs (no downloads), one per attention family attnscope supports.

FAMILIES (Llama, GPT-2, BERT) is what most unit tests sweep; ARCHITECTURES adds one tiny model per further
architecture family (tests/unit/test_families.py), with sliding windows of WINDOW keys, a softcap and learned sinks.
"""

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    GptOssConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
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

WINDOW = 8  # keys a sliding-window layer sees; tests use longer texts, so local layers really are local
# The further families' weights are drawn with this std instead of 0.02, so that attention is far from uniform: rows
# and heads differ, softcaps bite and a wrong scale or rule shows in every statistic.
SHARP = 0.25
# 6 query heads over 2 key/value heads (3 groups), head_dim 8, unless a family's own layout says otherwise.
_DECODER = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                num_key_value_heads=2, max_position_embeddings=1024, initializer_range=SHARP)


def qwen2_config() -> Qwen2Config:
    # max_window_layers=1: layer 0 global, layer 1 sliding (Qwen2 windows the layers from max_window_layers on).
    return Qwen2Config(**_DECODER, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)


def qwen3_config() -> Qwen3Config:
    # q/k RMS norms before rotary; windows as Qwen2.
    return Qwen3Config(**_DECODER, head_dim=8, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)


def gemma2_config() -> Gemma2Config:
    # Layer 0 sliding, layer 1 global (Gemma 2 alternates); the scale is query_pre_attn_scalar ** -0.5, not
    # head_dim ** -0.5; logits softcapped at a value the SHARP logits reach.
    return Gemma2Config(**_DECODER, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24,
                        attn_logit_softcapping=2.0)


def gemma3_config() -> Gemma3TextConfig:
    # Gemma 3 puts 5 local layers before each global one; two layers keep one of each. q/k RMS norms, separate
    # rotary bases for local and global layers, no softcap.
    return Gemma3TextConfig(**_DECODER, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24,
                            layer_types=["sliding_attention", "full_attention"])


def mistral_config() -> MistralConfig:
    return MistralConfig(**_DECODER, sliding_window=WINDOW)  # every layer sliding


def phi3_config() -> Phi3Config:
    # Fused qkv projection; every layer sliding (Phi-3-mini's 2047-key window, shrunk). Phi-3's default pad id
    # lies outside this vocabulary.
    return Phi3Config(**_DECODER, sliding_window=WINDOW, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def gpt_neox_config() -> GPTNeoXConfig:
    # Multi-head attention (no GQA), rotary on a quarter of each head, parallel residual (Pythia).
    return GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=1024, initializer_range=SHARP)


def gpt_oss_config() -> GptOssConfig:
    # Learned sinks in every layer; layer 0 sliding, layer 1 global (gpt-oss alternates); a mixture of 4 tiny experts,
    # 2 per token; yarn rotary as gpt-oss ships (its default max_position_embeddings is what yarn's factor assumes).
    return GptOssConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=WINDOW,
                        num_local_experts=4, num_experts_per_tok=2, initializer_range=SHARP)


ARCHITECTURES = {
    **FAMILIES,
    "qwen2": qwen2_config,
    "qwen3": qwen3_config,
    "gemma2": gemma2_config,
    "gemma3": gemma3_config,
    "mistral": mistral_config,
    "phi3": phi3_config,
    "gpt_neox": gpt_neox_config,
    "gpt_oss": gpt_oss_config,
}
ENCODERS = ("bert",)


def build(family: str, attn_implementation: str = ATTENTION_NAME, seed: int = 0) -> torch.nn.Module:
    """The same random weights for a given (family, seed), whatever the attention implementation."""
    register_attention()
    torch.manual_seed(seed)
    config = ARCHITECTURES[family]()
    auto = AutoModel if family in ENCODERS else AutoModelForCausalLM
    return auto.from_config(config, attn_implementation=attn_implementation).eval()


def padded_bert_layer(*, length: int, padded_from: int, seed: int = 3):
    """Layer 0 of the tiny BERT captured on `length` random ids whose positions from `padded_from` on are padding: a
    layer with an explicit (padding) mask."""
    from attnscope.capture import capturing

    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))
    attention_mask = torch.ones_like(ids)
    attention_mask[0, padded_from:] = 0
    with torch.no_grad(), capturing() as captured:
        build("bert")(input_ids=ids, attention_mask=attention_mask)
    return captured[0]


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
    """attnscope.Model around a tiny model of `family`, with a tokenizer that only displays ids."""
    from attnscope.models import Model, ModelSpec

    module = build(family)
    config = module.config
    return Model(spec=ModelSpec(f"tiny-{family}"), model=module, tokenizer=IdTokenizer(),
                 kind="encoder" if family == "bert" else "decoder", source="",
                 info={"n_layers": config.num_hidden_layers, "n_heads": config.num_attention_heads,
                       "max_positions": 1024})
