"""Why here on the packaged models, against independent fp64 computations (tests/references.py): SmolLM2's
information-flow contributions, every layer, query, key and head, against the parts of the model's own residual stream
(taken by hooks) materialised in fp64; its ablation losses against plain forward passes with a hook on the output
projection; MiniLM's (an encoder) likewise. The issue's bar is 1e-3; the tolerances below are tighter."""

import numpy as np
import pandas as pd
import pytest
import torch

import attnscope
from tests.references import ablated_loss, flow_contributions, flow_layers

pytestmark = pytest.mark.slow

TEXT = ("When Mary and John went to the store, John gave a drink to Mary. Later that day, Mary and John went to "
        "the park, and John gave a ball to")


def _ids(model):
    return model.tokenize(TEXT).as_tensor()


@pytest.mark.parametrize("norm", [1, 2])
def test_smollm2_contributions_equal_the_fp64_parts_of_its_own_residual_stream(smollm2, norm):
    result = attnscope.contributions(smollm2, TEXT, norm=norm, cache=False)
    ids = _ids(smollm2)
    frame = result.to_frame()
    assert result.meta["tokens"] == ids.shape[1]
    reference = flow_layers(smollm2.module, ids, "smollm2", smollm2.n_layers, smollm2.n_heads)
    worst = 0.0
    for layer in range(smollm2.n_layers):
        parts, residual, _ = flow_contributions(reference[layer], norm)
        rows = frame[frame["layer"] == layer]
        heads = rows[rows["key"] >= 0]
        where = tuple(torch.from_numpy(heads[name].to_numpy().astype(np.int64)) for name in ("head", "query", "key"))
        expected = parts[where].numpy()
        assert len(heads) == int(reference[layer]["visible"].sum())
        own = rows[rows["key"] == -1].sort_values("query")
        worst = max(worst, float(np.abs(heads["contribution"].to_numpy() - expected).max()),
                    float(np.abs(own["contribution"].to_numpy() - residual.numpy()).max()))
    print(f"L{norm}: largest difference from the fp64 reference over {len(frame):,} edges: {worst:.2e}")
    assert worst < 1e-4
    np.testing.assert_allclose(frame.groupby(["layer", "query"])["contribution"].sum(), 1.0, atol=1e-5)


def test_smollm2_ablation_equals_plain_forward_passes_with_a_hook(smollm2):
    ids = _ids(smollm2)
    heads = [(0, 0), (3, 4), (15, 8), (29, 2)]
    projections = {layer: smollm2.module.model.layers[layer].self_attn.o_proj for layer, _ in heads}
    means = {}
    hooks = [p.register_forward_pre_hook(lambda m, a, l=l: means.__setitem__(l, a[0][0].mean(0).detach()))
             for l, p in projections.items()]
    base = ablated_loss(smollm2.module, ids, None, smollm2.n_heads, None)
    for hook in hooks:
        hook.remove()
    for mode in ("zero", "mean"):
        for target in (None, ids.shape[1] - 1):
            result = attnscope.ablate(smollm2, TEXT, heads=heads, mode=mode, target=target, cache=False)
            frame = result.to_frame()
            assert list(zip(frame["layer"], frame["head"])) == heads
            for (layer, head), loss in zip(heads, frame["loss"]):
                width = means[layer].shape[-1] // smollm2.n_heads
                replace = None if mode == "zero" else means[layer][head * width:(head + 1) * width]
                expected = ablated_loss(smollm2.module, ids, projections[layer], smollm2.n_heads, head,
                                        replace=replace, target=target)
                assert loss == pytest.approx(expected, abs=1e-4), (mode, target, layer, head)
            if target is None:
                assert result.base_loss == pytest.approx(base, abs=1e-5)


def test_minilm_ablation_is_the_embeddings_cosine_distance(minilm):
    ids = _ids(minilm)
    result = attnscope.ablate(minilm, TEXT, heads=[(0, 3), (5, 11)], cache=False)
    clean = ablated_loss(minilm.module, ids, None, minilm.n_heads, None).mean(0)
    for (layer, head), loss in zip([(0, 3), (5, 11)], result.losses):
        projection = minilm.module.encoder.layer[layer].attention.output.dense
        ablated = ablated_loss(minilm.module, ids, projection, minilm.n_heads, head).mean(0)
        assert loss == pytest.approx(float(1 - torch.nn.functional.cosine_similarity(ablated, clean, dim=0)),
                                     abs=1e-6)
    assert "cosine" in result.metric and result.base_loss == 0.0
    followed = attnscope.contributions(minilm, TEXT, threshold=0.05, token=3, cache=False)
    assert isinstance(followed.to_frame(), pd.DataFrame) and len(followed.to_frame())
