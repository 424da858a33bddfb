"""The head atlas's statistics (attnscope.analyses.atlas) and its result objects (attnscope.studies.atlas) on
synthetic per-document rows: summaries against a plain loop and scipy, the t interval's coverage, Welch tests with
Benjamini-Hochberg against scipy on the raw values, planted clusters, the embedding, and save / open."""

import importlib.util
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import attnscope
from attnscope.analyses import atlas
from attnscope.studies.atlas import AtlasDiff, AtlasResult, label, open_atlas

STATISTICS = ("mean", "std", "low", "high", "median", "q25", "q75", "count")
# Every field the atlas writes, so that the result's findings and figures find theirs.
ATLAS_FIELDS = ("entropy", "normalized_entropy", "max_weight", "sink_mass", "mean_distance", "previous_token",
                "max_weight_slope", "entropy_slope", "taylor_order", "ns_ratio", "saturated", "induction")


def _rows(values: np.ndarray, fields: tuple[str, ...]) -> pd.DataFrame:
    """The runner's rows for values (documents, F, layers, heads): one row per document, layer and head."""
    n_docs, _, n_layers, n_heads = values.shape
    doc, layer, head = (a.ravel() for a in np.meshgrid(np.arange(n_docs), np.arange(n_layers), np.arange(n_heads),
                                                         indexing="ij"))
    frame = pd.DataFrame({"id": [f"doc-{d}" for d in doc], "tokens": 100 + doc, "layer": layer, "head": head})
    for f, name in enumerate(fields):
        frame[name] = values[doc, f, layer, head]
    return frame


def _reference(values: np.ndarray) -> dict[str, np.ndarray]:
    """Each statistic (F, layers, heads) by a plain loop over heads on the finite values, the interval from
    scipy.stats.t.interval."""
    _, n_fields, n_layers, n_heads = values.shape
    out = {name: np.full((n_fields, n_layers, n_heads), np.nan) for name in STATISTICS}
    for f, layer, head in itertools.product(range(n_fields), range(n_layers), range(n_heads)):
        x = values[:, f, layer, head]
        x = x[np.isfinite(x)]
        out["count"][f, layer, head] = len(x)
        if len(x) == 0:
            continue
        out["mean"][f, layer, head] = x.mean()
        out["median"][f, layer, head] = np.median(x)
        out["q25"][f, layer, head], out["q75"][f, layer, head] = np.quantile(x, [0.25, 0.75])
        if len(x) > 1:
            std = x.std(ddof=1)
            out["std"][f, layer, head] = std
            low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=std / np.sqrt(len(x)))
            out["low"][f, layer, head], out["high"][f, layer, head] = low, high
    return out


def _assert_summary(summary: atlas.Summary, expected: dict[str, np.ndarray]) -> None:
    for name in STATISTICS:
        np.testing.assert_allclose(getattr(summary, name), expected[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_summarise_equals_a_plain_loop_with_missing_values():
    rng = np.random.default_rng(0)
    fields = ("alpha", "beta")
    values = rng.normal(loc=[[[1.0]], [[-3.0]]], scale=2.0, size=(7, 2, 3, 4))  # 7 documents, 3 layers x 4 heads
    values[rng.random(values.shape) < 0.15] = np.nan  # scattered missing values (a window too narrow, a short text)
    values[1:, 1, 2, 3] = np.nan  # beta of L2H3 on one document only: a mean, no spread, no interval
    values[:, 0, 0, 1] = np.nan  # alpha of L0H1 on no document
    summary = atlas.summarise(_rows(values, fields), 3, 4)
    assert summary.fields == fields
    assert summary.count.dtype == np.int64
    _assert_summary(summary, _reference(values))
    assert summary.count[1, 2, 3] == 1 and np.isfinite(summary.mean[1, 2, 3])
    assert np.isnan([summary.std[1, 2, 3], summary.low[1, 2, 3], summary.high[1, 2, 3]]).all()
    assert summary.count[0, 0, 1] == 0 and np.isnan(summary.mean[0, 0, 1])


def test_summarise_is_independent_of_row_order():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(5, 1, 2, 3))
    rows = _rows(values, ("x",))
    shuffled = rows.sample(frac=1.0, random_state=0)
    for name in STATISTICS:
        np.testing.assert_allclose(getattr(atlas.summarise(shuffled, 2, 3), name),
                                   getattr(atlas.summarise(rows, 2, 3), name), rtol=1e-12)


def test_a_head_with_no_rows_counts_zero_documents():
    rows = _rows(np.ones((3, 1, 1, 2)), ("x",))
    summary = atlas.summarise(rows, 1, 3)  # head 2 never appears in the rows
    assert summary.count[0, 0, 2] == 0
    assert np.isnan(summary.mean[0, 0, 2])


@pytest.mark.parametrize("n_docs", [3, 20])
def test_the_interval_covers_the_true_mean_95_percent_of_the_time(n_docs):
    """8000 synthetic heads with known means and spreads. With 3 documents a z interval (1.96 s / sqrt n) would
    cover about 81% and mean +- s about 77%; with 20 the z interval covers about 93.5% and mean +- s nearly 100%. The
    binomial standard error of the coverage is 0.0024; a tolerance of 0.01 rejects each of them."""
    rng = np.random.default_rng(2)
    n_layers, n_heads = 40, 100
    truth = rng.normal(scale=5.0, size=(2, n_layers, n_heads))
    spread = rng.uniform(0.1, 3.0, size=(2, n_layers, n_heads))
    values = truth + spread * rng.normal(size=(n_docs, 2, n_layers, n_heads))
    summary = atlas.summarise(_rows(values, ("a", "b")), n_layers, n_heads)
    covered = (summary.low <= truth) & (truth <= summary.high)
    assert abs(covered.mean() - 0.95) < 0.01, covered.mean()
    # The interval is symmetric about the mean, and narrower than the spread of single documents once n > 5.
    np.testing.assert_allclose(summary.high - summary.mean, summary.mean - summary.low, rtol=1e-9)
    if n_docs > 5:
        assert (summary.high - summary.low < 2 * summary.std).all()


def _summaries(shift: np.ndarray, *, n_docs: int = 40, seed: int = 4) -> tuple[atlas.Summary, atlas.Summary,
                                                                              np.ndarray, np.ndarray]:
    """Summaries of two atlases of 2 fields x 2 layers x 4 heads whose true means differ by `shift` (same shape),
    with different documents (and numbers of documents) on each side; also the raw values."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=shift.shape)
    a = base + rng.normal(size=(n_docs, *shift.shape))
    b = base + shift + 1.5 * rng.normal(size=(n_docs + 7, *shift.shape))
    fields = ("x", "y")
    return atlas.summarise(_rows(a, fields), 2, 4), atlas.summarise(_rows(b, fields), 2, 4), a, b


def _benjamini_hochberg(p: np.ndarray, q: float) -> np.ndarray:
    """The step-up rule written out: reject the k smallest p, k the largest with p_(k) <= k q / m."""
    order = np.argsort(p)
    m = len(p)
    passing = np.flatnonzero(p[order] <= q * np.arange(1, m + 1) / m)
    rejected = np.zeros(m, dtype=bool)
    if len(passing):
        rejected[order[: passing.max() + 1]] = True
    return rejected


def test_difference_flags_the_heads_whose_means_differ_and_no_others():
    """Shifts of 2 standard deviations or more on 40 and 47 documents are found whatever the seed; an unchanged head
    is flagged by chance (about 1% each, 13 of them) on some seeds, not on this one. The p-values and the
    Benjamini-Hochberg decision are checked against scipy on the raw values and the rule written out."""
    shift = np.zeros((2, 2, 4))
    shift[0, 0, 1], shift[0, 1, 3], shift[1, 1, 0] = 2.0, -2.0, 2.5
    a, b, raw_a, raw_b = _summaries(shift)
    found = atlas.difference(a, b)
    assert found.fields == ("x", "y")
    np.testing.assert_allclose(found.delta, raw_b.mean(0) - raw_a.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(found.p_value, stats.ttest_ind(raw_a, raw_b, axis=0, equal_var=False).pvalue,
                               rtol=1e-6)
    np.testing.assert_array_equal(found.significant, shift != 0)
    np.testing.assert_array_equal(found.significant.ravel(),
                                  _benjamini_hochberg(found.p_value.ravel(), atlas.FDR))


def test_difference_corrects_for_the_number_of_heads():
    """A head whose p-value alone is below 0.05 is not flagged when the correction over every head says no."""
    shift = np.zeros((2, 2, 4))
    shift[0, 0, 0] = 0.55  # a small real change: p about 0.02 on its own, too weak after 16 tests
    a, b, raw_a, raw_b = _summaries(shift, seed=5)
    found = atlas.difference(a, b)
    p = found.p_value
    assert p[0, 0, 0] < 0.05 and not found.significant[0, 0, 0], p[0, 0, 0]
    np.testing.assert_array_equal(found.significant.ravel(), _benjamini_hochberg(p.ravel(), atlas.FDR))


def test_difference_leaves_out_heads_with_one_document_and_fields_one_side_lacks():
    rng = np.random.default_rng(4)
    a_values, b_values = rng.normal(size=(10, 2, 1, 3)), rng.normal(size=(12, 2, 1, 3)) + 4.0
    b_values[1:, 0, 0, 2] = np.nan  # field p of head 2 on one document of B: no test
    a = atlas.summarise(_rows(a_values, ("p", "q")), 1, 3)
    b = atlas.summarise(_rows(b_values[:, :1], ("p",)).assign(r=1.0), 1, 3)  # B has p and r, not q
    found = atlas.difference(a, b)
    assert found.fields == ("p",)
    assert np.isnan(found.p_value[0, 0, 2]) and not found.significant[0, 0, 2]
    assert np.isfinite(found.delta[0, 0, 2])
    assert found.significant[0, 0, :2].all()  # a shift of 4 standard deviations on 10 and 12 documents
    # Benjamini-Hochberg counts only the tests made (two here, not three).
    np.testing.assert_array_equal(found.significant[0, 0, :2], _benjamini_hochberg(found.p_value[0, 0, :2], atlas.FDR))


def test_difference_refuses_atlases_of_different_shapes():
    a = atlas.summarise(_rows(np.zeros((2, 1, 2, 4)), ("x",)), 2, 4)
    b = atlas.summarise(_rows(np.zeros((2, 1, 3, 4)), ("x",)), 3, 4)
    with pytest.raises(ValueError, match=r"2 x 4 and 3 x 4 layers x heads"):
        atlas.difference(a, b)


def _planted(n_per_cluster: int = 12, seed: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(heads, 4) points in three tight groups far apart, and their group."""
    rng = np.random.default_rng(seed)
    centres = np.array([[6.0, 0, 0, 0], [0, 6.0, 0, 0], [0, 0, 0, -6.0]])
    truth = np.repeat(np.arange(3), n_per_cluster)
    return centres[truth] + 0.3 * rng.normal(size=(len(truth), 4)), truth


def test_clusters_recover_planted_groups():
    values, truth = _planted()
    order = np.random.default_rng(0).permutation(len(truth))  # the groups not in runs of heads
    labels = atlas.clusters(values[order])
    assert len(set(labels)) == 3  # k = 3 by the silhouette score, from 2..8
    pairs = set(zip(truth[order], labels))
    assert len(pairs) == 3  # one label per planted group and one group per label
    names = atlas.describe_clusters(values[order], ["a", "b", "c", "d"], labels, top=1)
    by_group = {group: names[label] for group, label in pairs}
    assert by_group == {0: "high a", 1: "high b", 2: "low d"}


def test_clusters_with_too_few_heads_to_split():
    assert (atlas.clusters(np.array([[0.0, 1.0], [1.0, 0.0]])) == 0).all()


def test_features_standardise_the_fields_that_vary():
    mean = np.stack([np.arange(6.0).reshape(2, 3), np.full((2, 3), 7.0), np.array([[1.0, np.nan, 3.0],
                                                                                    [5.0, 5.0, 5.0]])])
    values, names = atlas.features(mean, ("rising", "constant", "gappy"))
    assert names == ["rising", "gappy"]  # a field equal on every head says nothing about any of them
    assert values.shape == (6, 2)
    np.testing.assert_allclose(values[:, 0], (np.arange(6.0) - 2.5) / np.arange(6.0).std())
    gappy = np.array([1.0, 3.0, 5.0, 5.0, 5.0])
    assert values[1, 1] == 0.0  # the missing head sits at the field's mean
    np.testing.assert_allclose(np.delete(values[:, 1], 1), (gappy - gappy.mean()) / gappy.std())


def test_pca_embedding_is_the_first_two_principal_components():
    values, _ = _planted()
    coords, axis = atlas.embed(values, "pca")
    assert coords.shape == (len(values), 2)
    centred = values - values.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt[:2].T
    for i in range(2):  # a component's sign is arbitrary
        np.testing.assert_allclose(np.abs(coords[:, i]), np.abs(projected[:, i]), rtol=1e-6, atol=1e-8)
    share = singular**2 / (singular**2).sum()
    assert axis == f"PCA: {share[0]:.0%} + {share[1]:.0%} of the variance"


def test_embed_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="embedding must be one of pca, umap; got 'tsne'"):
        atlas.embed(np.zeros((5, 3)), "tsne")


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn is installed here")
def test_umap_without_umap_learn_says_what_to_install():
    values, _ = _planted()
    with pytest.raises(ValueError, match=r"pip install umap-learn"):
        atlas.embed(values, "umap")


# ---- the result objects ------------------------------------------------------------------------------------------


def _result(seed: int = 7, n_docs: int = 6, shift: float = 0.0) -> AtlasResult:
    """An AtlasResult of 3 layers x 4 heads over n_docs synthetic documents, every atlas field, some values missing."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(n_docs, len(ATLAS_FIELDS), 3, 4)) + shift
    values[:, ATLAS_FIELDS.index("entropy_slope"), 0] = np.nan  # a sliding layer: no slope
    values[1:, ATLAS_FIELDS.index("ns_ratio"), 2, 1] = np.nan  # measured on one document only
    summary = atlas.summarise(_rows(values, ATLAS_FIELDS), 3, 4)
    meta = {"model": "tiny", "model_fingerprint": "abc", "corpus": "synthetic", "engine": "local",
            "documents": n_docs, "settings": {"max_tokens": 64, "seed": 0, "text_column": "text", "taylor_tokens": 32}}
    return AtlasResult(meta=meta, summary=summary, problems=("doc-x: empty",), sample="some text")


def _assert_same(opened: AtlasResult, result: AtlasResult) -> None:
    assert isinstance(opened, AtlasResult)
    assert opened.meta == result.meta and opened.problems == result.problems and opened.sample == result.sample
    assert opened.fields == result.fields
    for name in STATISTICS:
        got, want = getattr(opened.summary, name), getattr(result.summary, name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)  # NaN where NaN


@pytest.mark.parametrize("suffix", [".parquet", ".json"])
def test_atlas_result_saves_and_opens_unchanged(tmp_path, suffix):
    result = _result()
    path = result.save(tmp_path / f"atlas{suffix}")
    _assert_same(open_atlas(path), result)
    _assert_same(attnscope.open(path), result)


def test_atlas_result_frame_has_one_row_per_head_with_every_statistic():
    result = _result()
    frame = result.to_frame()
    assert len(frame) == 12
    expected = ["layer", "head", *ATLAS_FIELDS] + [f"{field}_{statistic}" for field in ATLAS_FIELDS
                                                    for statistic in ("std", "low", "high", "median", "count")]
    assert list(frame.columns) == expected
    row = frame[(frame["layer"] == 2) & (frame["head"] == 1)].iloc[0]
    summary, f = result.summary, ATLAS_FIELDS.index("ns_ratio")
    assert row["ns_ratio"] == summary.mean[f, 2, 1] and row["ns_ratio_count"] == 1
    assert np.isnan(row["ns_ratio_low"]) and np.isnan(row["ns_ratio_std"])
    np.testing.assert_array_equal(frame["taylor_order_high"].to_numpy().reshape(3, 4),
                                  summary.high[ATLAS_FIELDS.index("taylor_order")])


def test_atlas_result_clusters_are_named_by_the_fields_display_labels():
    found = _result().embedding("pca")
    assert len(found.names) == found.labels.max() + 1
    labels = {label(f) for f in found.features}
    for name in found.names:  # "high max weight, low N_s/N at N = 16"
        for part in name.split(", "):
            side, text = part.split(" ", 1)
            assert side in ("high", "low") and any(text.lower() == known.lower() for known in labels), name


def test_atlas_result_values_refuse_a_field_it_lacks():
    with pytest.raises(ValueError, match="no field 'nonsense'"):
        _result().values("nonsense")


def test_atlas_diff_with_itself_changes_nothing():
    result = _result()
    diff = result.diff(result)
    assert isinstance(diff, AtlasDiff)
    assert diff.difference.fields == ATLAS_FIELDS
    assert (diff.difference.delta[np.isfinite(diff.difference.delta)] == 0).all()
    assert not diff.difference.significant.any()
    frame = diff.to_frame()
    assert len(frame) == len(ATLAS_FIELDS) * 12 and not frame["significant"].any()
    assert all("0 of 12 heads changed" in f.measured for f in diff.findings()[1:])


def test_atlas_diff_of_a_shifted_atlas_flags_every_head():
    """B's documents are A's values + 1 (on 6 documents each, spread about 0.3): every tested head changed."""
    a, b = _result(), _result(seed=8, shift=1.0)
    diff = a.diff(b)
    delta, significant = diff.values("max_weight"), diff.values("max_weight", "significant")
    np.testing.assert_allclose(delta, b.values("max_weight") - a.values("max_weight"))
    assert significant.all()
    assert not diff.values("ns_ratio", "significant")[2, 1]  # one document on each side: no test
    with pytest.raises(ValueError, match="not 'nonsense'"):
        diff.values("nonsense")


def test_ray_actors_take_a_gpu_each_when_the_cluster_has_gpus():
    """The Ray engine's placement: a GPU per actor (at most one actor per GPU) where the model may use one, else a
    fractional CPU; a model asked for on the CPU stays there."""
    from attnscope.models import ModelSpec
    from attnscope.studies.atlas_ray import WORKER_CPUS, placement

    spec = ModelSpec("smollm2-135m")
    assert placement(spec, 4, {"CPU": 2.0}) == (spec, 4, {"num_cpus": WORKER_CPUS})
    gpu_spec, actors, resources = placement(spec, 4, {"CPU": 16.0, "GPU": 2.0})
    assert (gpu_spec.device, actors, resources) == ("cuda", 2, {"num_gpus": 1})
    assert placement(ModelSpec("smollm2-135m", device="cuda:1"), 1, {"GPU": 8.0})[0].device == "cuda"
    on_cpu = ModelSpec("smollm2-135m", device="cpu")
    assert placement(on_cpu, 2, {"GPU": 8.0}) == (on_cpu, 2, {"num_cpus": WORKER_CPUS})
