"""Why here on tiny random models of each family: information-flow contributions against a direct fp64
materialisation of the parts (tests/references.py: the model's own residual after attention, taken by hooks, split into
alpha * v W_O per head and key), and head ablation against plain forward passes with a hook on the output projection.
Then the study's own rules: the traversal from a token, thresholds, renormalisation, -1 for the last token, and one
sentence for each misuse."""

import functools

import numpy as np
import pandas as pd
import pytest
import torch

import attnscope
from attnscope import anatomy
from attnscope.analyses import ablation, contributions
from attnscope.capture import run_with_capture
from attnscope.studies.base import Source
from attnscope.studies.why import ablate as ablate_study
from attnscope.studies.why import contributions as contributions_study
from attnscope.tokens import Cut
from tests.references import FLOW_PATHS, ablated_loss, flow_contributions, flow_layers
from tests.unit.tiny_models import ARCHITECTURES, ENCODERS, VOCAB, IdTokenizer, build

LENGTH = 24
FLOW_FAMILIES = ["llama", "gpt_oss", "gemma3", "gemma2", "gpt2", "bert", "gpt_neox", "qwen2"]
TOLERANCE = 1e-5  # fp32 contributions against the fp64 reference (each in [0, 1]; |w| - |w - x| cancels)


@functools.cache
def _model(family: str):
    return build(family)


def _ids(seed: int = 5) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, LENGTH), generator=torch.Generator().manual_seed(seed))


def _shape(model) -> tuple[int, int]:
    config = model.config
    return (getattr(config, "num_hidden_layers", None) or config.n_layer,
            getattr(config, "num_attention_heads", None) or config.n_head)


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_every_layers_contributions_equal_the_fp64_parts_of_the_models_own_residual(family, norm):
    model, ids = _model(family), _ids()
    n_layers, n_heads = _shape(model)
    reference = flow_layers(model, ids, family, n_layers, n_heads)
    capture = run_with_capture(model, ids, hidden_states=True)
    layers = anatomy.attention_layers(model)
    for index in range(n_layers):
        edges = contributions.layer_edges(capture.layer(index), capture.hidden_states[index][0], layers[index],
                                          norm=norm, backend="torch")
        parts, residual, sink = flow_contributions(reference[index], norm)
        frame = pd.DataFrame(vars(edges))
        heads = frame[frame["key"] >= 0]
        got = torch.zeros_like(parts)
        where = tuple(torch.from_numpy(heads[name].to_numpy().astype(np.int64)) for name in ("head", "query", "key"))
        got[where] = torch.tensor(heads["contribution"].to_numpy().copy(), dtype=torch.float64)
        assert len(heads) == int(reference[index]["visible"].sum()), "one edge per visible part at threshold 0"
        torch.testing.assert_close(got, parts, rtol=0, atol=TOLERANCE)
        kept = frame[frame["key"] == contributions.RESIDUAL].sort_values("query")
        torch.testing.assert_close(torch.tensor(kept["contribution"].to_numpy().copy(), dtype=torch.float64), residual,
                                   rtol=0, atol=TOLERANCE)
        if sink is not None:
            sinks = frame[frame["key"] == contributions.SINK]
            assert len(sinks) == n_heads * LENGTH
        sums = frame.groupby("query")["contribution"].sum()
        np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_l1_correction_is_exact_where_a_part_overshoots_a_channel(family):
    """Sharp weights make parts larger than the whole in some channels, where the L1 distance bends: the chunked
    path's correction must be there (the linear term alone would be wrong)."""
    model = _model(family)
    ids = _ids(11)
    capture = run_with_capture(model, ids, hidden_states=True)
    layer = anatomy.attention_layers(model)[0]
    captured = capture.layer(0)
    whole_rows = slice(0, LENGTH)
    u = contributions.head_values(captured, layer, torch.float64)
    weights = captured.probs()[0].double()
    heads_out = torch.einsum("hts,hsk->thk", weights,
                             captured.v[0].double().repeat_interleave(captured.groups, 0)).reshape(LENGTH, -1)
    projected = layer.project(heads_out)
    factor = layer.post_factor(projected)
    whole = capture.hidden_states[0][0].double()[whole_rows] + (projected if factor is None else projected * factor)
    from attnscope.kernels.contributions import chunked, naive

    linear_only = weights * torch.matmul(torch.where(whole >= 0, 1.0, -1.0).double()
                                         * (1 if factor is None else factor), u.transpose(1, 2))
    exact = naive.contribution_scores(whole, u, weights, factor=factor, norm=1)
    assert (linear_only - exact).abs().max() > 1e-6, "no part overshoots: the test does not reach the correction"
    got = chunked.contribution_scores(whole, u, weights, factor=factor, norm=1)
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["zero", "mean"])
@pytest.mark.parametrize("family", sorted(ARCHITECTURES))
def test_ablation_losses_equal_plain_forward_passes_with_a_hook_on_the_output_projection(family, mode):
    model = _model(family)
    ids = _ids()
    n_layers, n_heads = _shape(model)
    projections = [layer.projection for layer in anatomy.attention_layers(model)]
    means = {}
    hooks = [p.register_forward_pre_hook(lambda m, a, i=i: means.__setitem__(i, a[0][0].mean(0).detach()))
             for i, p in enumerate(projections)]
    clean = ablated_loss(model, ids, projections[0], n_heads, None)
    for hook in hooks:
        hook.remove()
    for target in (None, 9):
        result = ablation.ablate(model, ids, n_heads=n_heads, mode=mode, target=target)
        assert len(result.losses) == n_layers * n_heads
        for layer, head, loss in zip(result.layers, result.heads, result.losses):
            width = means[layer].shape[-1] // n_heads
            replace = None if mode == "zero" else means[layer][head * width:(head + 1) * width]
            expected = ablated_loss(model, ids, projections[layer], n_heads, int(head), replace=replace,
                                    target=target)
            if family in ENCODERS:
                reference = clean.mean(0) if target is None else clean[target]
                ablated = expected.mean(0) if target is None else expected[target]
                expected = float(1 - torch.nn.functional.cosine_similarity(ablated, reference, dim=0))
            assert loss == pytest.approx(expected, abs=1e-6), (family, mode, target, layer, head)
        base = 0.0 if family in ENCODERS else ablated_loss(model, ids, projections[0], n_heads, None, target=target)
        assert result.base_loss == pytest.approx(base, abs=1e-6)


def test_every_family_attnscope_tests_has_its_flow_paths_written_out():
    assert set(FLOW_FAMILIES) <= set(FLOW_PATHS)


# ---- the studies on a tiny Llama ------------------------------------------------------------------------------------


class TinyModel:
    """What a Source needs of attnscope.models.Model, around a tiny random Llama (no tokenizer: token ids)."""

    def __init__(self, family: str = "llama"):
        self.module = _model(family)
        self.n_layers, self.n_heads = _shape(self.module)
        self.kind = "encoder" if family in ENCODERS else "decoder"
        self.info = {"n_layers": self.n_layers, "n_heads": self.n_heads, "device": "cpu", "dtype": "float32",
                     "quantize": "none"}
        self.spec = attnscope.ModelSpec("tiny-" + family)
        self.fingerprint = "tiny-" + family

    def cut(self, max_tokens, keep="start", ceiling=None):
        return Cut(max_tokens or 10**9, keep)

    def tokenize(self, text, cut=None):
        from attnscope.tokens import from_ids

        return from_ids(IdTokenizer(), text, max_tokens=(cut or Cut(10**9)).max_tokens, keep=(cut or Cut(10**9)).keep)


def _ids_text(seed: int = 5) -> tuple[int, ...]:
    return tuple(int(i) for i in _ids(seed)[0])


def test_following_a_token_keeps_exactly_the_edges_of_the_full_graph_that_lead_back_to_it():
    source = Source(TinyModel())
    text, cut = _ids_text(), Cut(10**9)
    full = contributions_study(source, text, cut=cut, threshold=0.05).to_frame()
    token = LENGTH - 1
    followed = contributions_study(source, text, cut=cut, threshold=0.05, token=-1)
    assert followed.meta["token"] == token
    frontier = {token}
    expected = []
    for layer in reversed(range(source.model.n_layers)):
        rows = full[(full["layer"] == layer) & full["query"].isin(frontier)]
        expected.append(rows)
        frontier = set(np.where(rows["key"] == -1, rows["query"], rows["key"]).tolist()) - {-2}
    expected = pd.concat(expected).sort_values(["layer", "query", "head", "key"]).reset_index(drop=True)
    got = followed.to_frame().sort_values(["layer", "query", "head", "key"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert "contribution-graph" in followed.figures()


def test_a_threshold_drops_edges_without_renormalising_unless_asked():
    source = Source(TinyModel())
    text, cut = _ids_text(), Cut(10**9)
    every = contributions_study(source, text, cut=cut).to_frame()
    kept = contributions_study(source, text, cut=cut, threshold=0.1).to_frame()
    assert (kept["contribution"] >= 0.1).all() and len(kept) < len(every)
    merged = kept.merge(every, on=["layer", "query", "key", "head"], suffixes=("", "_all"))
    np.testing.assert_array_equal(merged["contribution"], merged["contribution_all"])
    again = contributions_study(source, text, cut=cut, threshold=0.1, renormalize=True).to_frame()
    np.testing.assert_allclose(again.groupby(["layer", "query"])["contribution"].sum(), 1.0, atol=1e-6)


def test_the_ablation_study_takes_head_numbers_pairs_or_every_head_and_checks_them():
    source = Source(TinyModel())
    text, cut = _ids_text(), Cut(10**9)
    every = ablate_study(source, text, cut=cut)
    assert every.to_frame().shape == (source.model.n_layers * source.model.n_heads, 4)
    pairs = ablate_study(source, text, cut=cut, heads=[(2, 1), (0, 5)])
    assert list(zip(pairs.layers, pairs.heads)) == [(2, 1), (0, 5)]
    frame = every.to_frame().set_index(["layer", "head"])
    assert pairs.losses.tolist() == [frame.loc[(2, 1), "loss"], frame.loc[(0, 5), "loss"]]
    numbers = ablate_study(source, text, cut=cut, heads=[3])
    assert list(numbers.layers) == list(range(source.model.n_layers)) and set(numbers.heads) == {3}
    assert np.isnan(numbers.grid()).sum() == source.model.n_layers * (source.model.n_heads - 1)
    with pytest.raises(ValueError, match="there is no head 9.0"):
        ablate_study(source, text, cut=cut, heads=[(9, 0)])
    with pytest.raises(ValueError, match="target=24 is not a token position .* from 1 to 23"):
        ablate_study(source, text, cut=cut, target=24)
    with pytest.raises(ValueError, match="target=0 is not a token position"):
        ablate_study(source, text, cut=cut, target=0)
    last = ablate_study(source, text, cut=cut, heads=[(0, 0)], target=-1)
    assert last.meta["target"] == LENGTH - 1
    assert "Which heads matter" in every.findings()[0].text()
    assert set(every.figures()) == {"ablation-map", "ablation-bars"}


def test_results_save_and_open_again(tmp_path):
    source = Source(TinyModel())
    text, cut = _ids_text(), Cut(10**9)
    for result in (ablate_study(source, text, cut=cut, heads=[(1, 2)]),
                   contributions_study(source, text, cut=cut, threshold=0.05, token=5)):
        for suffix in (".json", ".parquet"):
            opened = attnscope.open(result.save(tmp_path / f"r{suffix}"))
            pd.testing.assert_frame_equal(opened.to_frame(), result.to_frame())
        assert len(repr(result)) < 1024


def test_maps_refuses_layer_head_pairs_with_a_sentence():
    from attnscope import settings

    assert settings.check("heads", [(1, 2)]) == ((1, 2),)
    assert settings.setting("heads").parse("5.1,7.0") == ((5, 1), (7, 0))
    with pytest.raises(ValueError, match="maps shows heads of one layer"):
        settings.head_numbers(((1, 2),), "maps")
    with pytest.raises(ValueError, match="heads="):
        settings.check("heads", [(1, 2, 3)])


def test_a_model_whose_norm_after_attention_is_not_an_rms_norm_is_refused_with_a_sentence():
    model = build("gemma3")
    layer = anatomy.attention_layers(model)[0]
    broken = anatomy.AttentionLayer(layer.index, layer.attention, layer.projection,
                                    torch.nn.LayerNorm(model.config.hidden_size, eps=1e-6), False)
    with pytest.raises(anatomy.UnsupportedModel, match="not an RMS norm"):
        broken.post_factor(torch.randn(4, model.config.hidden_size))


def test_a_gemma_in_bf16_splits_its_post_attention_norm_too():
    """Gemma's norm computes in fp32 and rounds its output to bf16; the RMS check allows that rounding, and the
    contributions still sum to 1 and stay near the fp32 model's."""
    ids = _ids()
    edges = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = build("gemma2").to(dtype)
        capture = run_with_capture(model, ids, hidden_states=True)
        layer = anatomy.attention_layers(model)[1]
        found = contributions.layer_edges(capture.layer(1), capture.hidden_states[1][0], layer, backend="torch")
        frame = pd.DataFrame(vars(found))
        np.testing.assert_allclose(frame.groupby("query")["contribution"].sum(), 1.0, atol=1e-5)
        edges[dtype] = frame.set_index(["query", "key", "head"])["contribution"]
    both = pd.concat(edges, axis=1).dropna()
    assert len(both) == len(edges[torch.float32])
    assert float((both.iloc[:, 0] - both.iloc[:, 1]).abs().max()) < 0.05  # bf16 activations, not another rule
