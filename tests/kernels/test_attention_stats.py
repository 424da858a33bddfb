"""attention_stats: Triton (interpreter) and torch paths against the fp64 reference."""

import pytest
import torch

from attnscope.kernels import attention_stats
from attnscope.kernels.attention_stats import naive
from attnscope.kernels.utils import resolve_backend
from tests.kernels.helpers import MASKS, DTYPES, assert_within_rule, cases, make_mask, make_qkv, mask_id, shape_id
from tests.kernels.helpers import STATS_FIELDS as FIELDS
from tests.kernels.helpers import check_attention_stats as _check

CASES, IDS = cases()


@pytest.mark.parametrize("shape,dtype_name", CASES, ids=IDS)
def test_triton_matches_reference(shape, dtype_name):
    q, k, v = make_qkv(shape, DTYPES[dtype_name])
    causal, topk = shape[-1], min(5, shape[4])
    result = attention_stats(q, k, v, causal=causal, topk=topk, backend="triton")
    _check(result, q, k, v, causal=causal, topk=topk)


@pytest.fixture
def small_tiles(monkeypatch):
    """Blocks of 32 query rows and tiles of 16 keys: every shape above walks several tiles (diagonal tiles, tiles
    skipped by a mask), rescaling the running sums whenever a row's maximum grows (no margin)."""
    from attnscope.kernels.attention_stats import chunked

    monkeypatch.setattr(chunked, "ROW_BLOCK", 32)
    monkeypatch.setattr(chunked, "TILE_BYTES", 1)
    monkeypatch.setattr(chunked, "RESCALE_MARGIN", 0.0)


@pytest.fixture
def row_pieces(small_tiles, monkeypatch):
    """Small tiles, and each matmul's rows cut into 3 batch entries (as 2 threads cut 3 key/value heads' rows in 2);
    blocks whose rows do not split in 3 go whole."""
    from attnscope.kernels.attention_stats import chunked

    monkeypatch.setattr(chunked, "row_pieces", lambda n_batches, n_rows, threads: 3)


@pytest.mark.parametrize("n_batches,n_rows,threads,pieces", [
    (3, 384, 2, 2), (3, 384, 1, 1), (2, 384, 2, 1), (1, 128, 4, 4), (3, 384, 6, 2), (3, 40, 2, 1), (3, 385, 2, 1)])
def test_row_pieces_make_the_batch_a_multiple_of_the_threads(n_batches, n_rows, threads, pieces):
    from attnscope.kernels.attention_stats import chunked

    assert chunked.row_pieces(n_batches, n_rows, threads) == pieces


@pytest.mark.parametrize("tiles", ["default", "small", "row_pieces"])
@pytest.mark.parametrize("shape,dtype_name", CASES, ids=IDS)
def test_torch_path_matches_reference(shape, dtype_name, tiles, request):
    if tiles != "default":
        request.getfixturevalue("small_tiles" if tiles == "small" else tiles)
    q, k, v = make_qkv(shape, DTYPES[dtype_name])
    causal, topk = shape[-1], min(5, shape[4])
    _check(attention_stats(q, k, v, causal=causal, topk=topk, backend="torch"), q, k, v, causal=causal, topk=topk)


MASK_CASES = [(shape, name, kind, softcap) for shape, name in CASES for kind, softcap in MASKS]
MASK_IDS = [f"{case_id}-{mask_id(kind, softcap)}" for case_id in IDS for kind, softcap in MASKS]


@pytest.mark.parametrize("tiles", ["default", "small", "row_pieces"])
@pytest.mark.parametrize("shape,dtype_name,kind,softcap", MASK_CASES, ids=MASK_IDS)
def test_torch_path_with_masks_and_softcap_matches_reference(shape, dtype_name, kind, softcap, tiles, request):
    if tiles != "default":
        request.getfixturevalue("small_tiles" if tiles == "small" else tiles)
    q, k, v = make_qkv(shape, DTYPES[dtype_name], logit_scale=3.0 if softcap else 1.0)
    mask = make_mask(kind, shape)
    topk = min(5, shape[4])
    result = attention_stats(q, k, v, causal=shape[-1], topk=topk, mask=mask, softcap=softcap, backend="torch")
    _check(result, q, k, v, causal=shape[-1], topk=topk, mask=mask, softcap=softcap)


@pytest.mark.parametrize("kind", ["sliding", "padding"])
def test_masked_torch_path_over_several_tiles(kind, monkeypatch):
    """A sliding window leaves most key tiles out of each block's work; padding leaves whole rows with no key."""
    from attnscope.kernels.attention_stats import chunked

    monkeypatch.setattr(chunked, "TILE_BYTES", 2**16)
    shape = (2, 9, 3, 500, 500, 64, True)
    q, k, v = make_qkv(shape, torch.float32)
    mask = make_mask(kind, shape)
    result = attention_stats(q, k, v, topk=8, mask=mask, softcap=30.0, backend="torch")
    _check(result, q, k, v, causal=True, topk=8, mask=mask, softcap=30.0)


def test_rows_that_see_no_key_have_zero_weights():
    shape = (2, 3, 1, 20, 20, 16, True)
    q, k, v = make_qkv(shape, torch.float32)
    mask = make_mask("padding", shape)  # sequence 0: queries 0..2 see nothing
    result = attention_stats(q, k, v, topk=2, mask=mask, backend="torch")
    empty = (slice(0, 1), slice(None), slice(0, 3))
    assert torch.isneginf(result.lse[empty]).all() and not torch.isinf(result.lse[1]).any()
    for field in ("entropy", "max_weight", "sink_mass", "mean_distance", "output", "topk_weights"):
        assert (getattr(result, field)[empty] == 0).all(), field
    assert (result.topk_indices[empty] == -1).all() and (result.argmax[empty] == 0).all()


def test_argmax_can_be_left_out():
    q, k, v = make_qkv((1, 3, 1, 40, 40, 16, True), torch.float32)
    with_argmax = attention_stats(q, k, v, topk=2, backend="torch")
    without = attention_stats(q, k, v, topk=2, argmax=False, backend="torch")
    assert without.argmax is None
    for field in FIELDS:
        torch.testing.assert_close(getattr(without, field), getattr(with_argmax, field), rtol=0, atol=0)


def test_an_explicit_mask_is_the_torch_path():
    q, k, v = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    mask = make_mask("sliding", (1, 2, 1, 8, 8, 16, True))
    with pytest.raises(ValueError, match="Triton kernels take no explicit mask"):
        attention_stats(q, k, v, backend="triton", mask=mask)
    assert resolve_backend("auto", torch.device("cuda"), unsupported="explicit mask") == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"


def test_a_mask_replaces_the_causal_rule():
    """The causal rule written out as a mask gives the causal statistics, and a mask may open what causal hides."""
    shape = (1, 3, 1, 30, 30, 16, True)
    q, k, v = make_qkv(shape, torch.float32)
    rule = torch.ones(30, 30, dtype=torch.bool).tril()
    causal = attention_stats(q, k, v, causal=True, backend="torch")
    written = attention_stats(q, k, v, causal=True, mask=rule, backend="torch")
    for field in FIELDS[:5] + ("output",):
        torch.testing.assert_close(getattr(written, field), getattr(causal, field))
    opened = attention_stats(q, k, v, causal=True, mask=torch.ones(30, 30, dtype=torch.bool), backend="torch")
    torch.testing.assert_close(opened.output, attention_stats(q, k, v, causal=False, backend="torch").output)


@pytest.mark.parametrize("mask,message", [
    (torch.ones(8, 8), "bool"),
    (torch.ones(1, 5, 8, 8, dtype=torch.bool), "broadcast to"),
    (torch.ones(8, 9, dtype=torch.bool), "broadcast to"),
])
def test_bad_masks_name_the_shapes(mask, message):
    q, k, _ = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    with pytest.raises(ValueError, match=message):
        attention_stats(q, k, mask=mask)


def test_bad_softcap():
    q, k, _ = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    with pytest.raises(ValueError, match="softcap must be a positive number"):
        attention_stats(q, k, softcap=0.0)


@pytest.mark.parametrize("n_queries", [500, 1023])
def test_torch_path_on_larger_shapes(n_queries, monkeypatch):
    from attnscope.kernels.attention_stats import chunked

    monkeypatch.setattr(chunked, "TILE_BYTES", 2**18)  # several key tiles per block of rows
    q, k, v = make_qkv((1, 9, 3, n_queries, n_queries, 64, True), torch.float32)
    result = attention_stats(q, k, v, topk=8, backend="torch")
    _check(result, q, k, v, causal=True, topk=8)


def test_without_v_or_topk_leaves_them_out():
    q, k, _ = make_qkv((1, 2, 1, 20, 20, 16, True), torch.float32)
    for backend in ("triton", "torch"):
        result = attention_stats(q, k, backend=backend)
        assert result.output is None and result.topk_weights is None and result.topk_indices is None


def test_peaked_logits_and_first_row():
    """Large logits (near one-hot rows) stay finite; the first causal row sees only key 0."""
    q, k, v = make_qkv((1, 3, 1, 64, 64, 32, True), torch.float32, logit_scale=30.0)
    for backend in ("triton", "torch"):
        result = attention_stats(q, k, v, topk=3, backend=backend)
        for field in ("lse", "entropy", "max_weight", "mean_distance"):
            assert torch.isfinite(getattr(result, field)).all(), (backend, field)
        assert torch.allclose(result.max_weight[..., 0], torch.ones(1)) and (result.argmax[..., 0] == 0).all()
        assert torch.allclose(result.entropy[..., 0], torch.zeros(1), atol=1e-6)
        assert (result.topk_indices[..., 0, 1:] == -1).all() and (result.topk_weights[..., 0, 1:] == 0).all()


def test_entropy_is_bounded_by_log_of_visible_keys():
    q, k, _ = make_qkv((1, 3, 1, 100, 100, 64, True), torch.float32, logit_scale=0.01)
    result = attention_stats(q, k, backend="torch")
    visible = torch.arange(1, 101, dtype=torch.float32)
    assert (result.entropy <= torch.log(visible) + 1e-5).all()
    torch.testing.assert_close(result.entropy, torch.log(visible).expand_as(result.entropy), atol=1e-3, rtol=0)


@pytest.mark.parametrize("bad,message", [
    (dict(q=torch.zeros(1, 3, 4, 8), k=torch.zeros(1, 2, 4, 8)), "multiple of the key/value heads"),
    (dict(q=torch.zeros(1, 2, 4, 8), k=torch.zeros(1, 2, 4, 16)), "q's B and D"),
    (dict(q=torch.zeros(1, 2, 9, 8), k=torch.zeros(1, 2, 4, 8)), "T <= S"),
    (dict(q=torch.zeros(2, 8), k=torch.zeros(2, 8)), "4-D"),
    (dict(q=torch.zeros(1, 2, 4, 8, dtype=torch.float64), k=torch.zeros(1, 2, 4, 8, dtype=torch.float64)), "float32"),
])
def test_bad_inputs_name_the_shapes(bad, message):
    with pytest.raises(ValueError, match=message):
        attention_stats(bad["q"], bad["k"])


def test_bad_backend_and_topk():
    q, k, _ = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        attention_stats(q, k, backend="cuda")
    with pytest.raises(ValueError, match="topk must be in"):
        attention_stats(q, k, topk=9)


# --- the compiled tile (kernels.compiled): the torch path without top-k, exp and entropy sum fused by torch.compile


NO_TOPK = ("lse", "entropy", "max_weight", "sink_mass", "mean_distance", "output")


def _check_without_topk(result, q, k, v, **extras):
    reference = naive.attention_stats(q, k, v, **extras)
    plain = naive.attention_stats(q, k, v, **extras, dtype=q.dtype)
    for field in NO_TOPK:
        assert_within_rule(getattr(result, field), getattr(reference, field), getattr(plain, field), what=field)


@pytest.mark.parametrize("argmax", [True, False], ids=["argmax", "stepped"])
@pytest.mark.parametrize("tiles", ["default", "small", "row_pieces"])
@pytest.mark.parametrize("shape,dtype_name,kind,softcap",
                         [(shape, name, None, None) for shape, name in CASES] + MASK_CASES,
                         ids=[f"{i}-nomask" for i in IDS] + MASK_IDS)
def test_compiled_torch_path_matches_reference(shape, dtype_name, kind, softcap, tiles, argmax, request, monkeypatch):
    """ATTNSCOPE_CPU_COMPILE=on: every call takes the compiled exp/entropy pass (one graph for all tile shapes);
    without an argmax and a mask, the whole tile step (softmax_step), which under the causal rule also sums the
    weights and the distance terms and leaves V alone to the matmul (the engine's path)."""
    if tiles != "default":
        request.getfixturevalue({"small": "small_tiles", "row_pieces": "row_pieces"}[tiles])
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "on")
    q, k, v = make_qkv(shape, DTYPES[dtype_name], logit_scale=3.0 if softcap else 1.0)
    mask = None if kind is None else make_mask(kind, shape)
    extras = dict(causal=shape[-1], mask=mask, softcap=softcap)
    result = attention_stats(q, k, v, **extras, argmax=argmax, backend="torch")
    _check_without_topk(result, q, k, v, **extras)
    if argmax:
        full = naive.probabilities(naive.masked_scores(q, k, causal=shape[-1], scale=None, mask=mask,
                                                       softcap=softcap))
        chosen = full.gather(-1, result.argmax[..., None]).squeeze(-1)
        torch.testing.assert_close(chosen, full.amax(-1), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("tiles", ["default", "small", "row_pieces"])
def test_compiled_causal_step_without_values(tiles, request, monkeypatch):
    """The engine's compiled step with no V to multiply: the row sums come from the step alone."""
    if tiles != "default":
        request.getfixturevalue({"small": "small_tiles", "row_pieces": "row_pieces"}[tiles])
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "on")
    q, k, _ = make_qkv((1, 6, 2, 200, 200, 32, True), torch.float32)
    result = attention_stats(q, k, argmax=False, backend="torch")
    reference = naive.attention_stats(q, k, causal=True)
    plain = naive.attention_stats(q, k, causal=True, dtype=q.dtype)
    assert result.output is None
    for field in NO_TOPK[:-1]:
        assert_within_rule(getattr(result, field), getattr(reference, field), getattr(plain, field), what=field)


def test_compiled_and_eager_paths_agree_on_a_long_causal_layer(monkeypatch):
    """SmolLM2's 9:3 heads at 1,500 tokens over several key tiles: the compiled pass against the in-place torch one."""
    from attnscope.kernels.attention_stats import chunked

    monkeypatch.setattr(chunked, "TILE_BYTES", 2**18)
    q, k, v = make_qkv((1, 9, 3, 1500, 1500, 64, True), torch.float32, logit_scale=2.0)
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "off")
    eager = attention_stats(q, k, v, argmax=False, backend="torch")
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "on")
    fused = attention_stats(q, k, v, argmax=False, backend="torch")
    for field in NO_TOPK:
        torch.testing.assert_close(getattr(fused, field), getattr(eager, field), rtol=2e-5, atol=1e-6)


def test_compile_policy(monkeypatch):
    from attnscope.kernels import compiled

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "auto")
    assert not compiled.wanted(cpu, 10, least=100) and not compiled.wanted(cuda, 1000, least=100)
    assert compiled.wanted(cpu, 1000, least=100) == compiled.has_compiler()
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "off")
    assert not compiled.wanted(cpu, 1000, least=100)
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "on")
    assert compiled.wanted(cpu, 1, least=100) and not compiled.wanted(cuda, 1, least=100)
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "sometimes")
    with pytest.raises(ValueError, match="ATTNSCOPE_CPU_COMPILE must be one of"):
        compiled.wanted(cpu, 1, least=100)


def test_a_failed_compilation_falls_back_to_the_same_function_eagerly(monkeypatch, caplog):
    """Under "auto" a compiler error is logged once and the process keeps to eager torch; under "on" it raises."""
    from attnscope.kernels import compiled

    def broken(fn, **options):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(compiled.torch, "compile", broken)
    monkeypatch.setattr(compiled, "_failed", compiled.threading.Event())
    double = compiled.fused(lambda x: 2 * x)
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "on")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        double(torch.ones(3))
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "auto")
    with caplog.at_level("WARNING", logger=compiled.__name__):
        assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))
        assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))
    assert compiled._failed.is_set() and not compiled.wanted(torch.device("cpu"), 10**9, least=1)
    assert [record.getMessage() for record in caplog.records] == [
        "torch.compile of <lambda> failed (RuntimeError: no C++ compiler); the CPU torch path stays eager from now on."
    ]


WINDOWS = [1, 5, 40, 10_000]  # one key, a few, more than a tile of the small-tile fixture, wider than any sequence
CAUSAL_CASES = [(shape, name) for shape, name in CASES if shape[-1]]


def make_sinks(n_heads: int, *, seed: int = 0) -> torch.Tensor:
    """Learned sink logits spread wide: some far below every real logit, some far above (a sink that takes it all)."""
    spread = torch.tensor([-30.0, 8.0, 0.5, -2.0])
    values = spread[torch.arange(n_heads) % 4] + torch.randn(n_heads, generator=torch.Generator().manual_seed(seed))
    return values.to(make_qkv((1, 1, 1, 1, 1, 4, True), torch.float32)[0].device)


@pytest.mark.parametrize("tiles", ["default", "small", "row_pieces"])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("shape,dtype_name", CAUSAL_CASES, ids=[shape_id(*c) for c in CAUSAL_CASES])
def test_sliding_window_matches_reference(shape, dtype_name, window, tiles, request):
    if tiles != "default":
        request.getfixturevalue("small_tiles" if tiles == "small" else tiles)
    q, k, v = make_qkv(shape, DTYPES[dtype_name])
    topk = min(5, shape[4])
    for argmax in (True, False):  # without top-k and argmax: the engine's own path
        result = attention_stats(q, k, v, topk=topk if argmax else 0, window=window, argmax=argmax, backend="torch")
        if argmax:
            _check(result, q, k, v, causal=True, topk=topk, window=window)
        else:
            reference = naive.attention_stats(q, k, v, window=window)
            plain = naive.attention_stats(q, k, v, window=window, dtype=q.dtype)
            for field in ("lse", "entropy", "max_weight", "sink_mass", "mean_distance", "output"):
                assert_within_rule(getattr(result, field), getattr(reference, field), getattr(plain, field),
                                   what=field)


@pytest.mark.parametrize("tiles", ["default", "small", "row_pieces"])
@pytest.mark.parametrize("kind", [None, "padding", "random"])
@pytest.mark.parametrize("shape,dtype_name", CASES, ids=IDS)
def test_learned_sinks_match_reference(shape, dtype_name, kind, tiles, request):
    if tiles != "default":
        request.getfixturevalue("small_tiles" if tiles == "small" else tiles)
    q, k, v = make_qkv(shape, DTYPES[dtype_name])
    sinks, mask, topk = make_sinks(shape[1]), None if kind is None else make_mask(kind, shape), min(5, shape[4])
    result = attention_stats(q, k, v, causal=shape[-1], topk=topk, mask=mask, sinks=sinks, backend="torch")
    _check(result, q, k, v, causal=shape[-1], topk=topk, mask=mask, sinks=sinks)
    if kind is None and shape[-1]:  # with a window and a softcap too
        result = attention_stats(q, k, v, topk=topk, window=3, softcap=2.0, sinks=sinks, backend="torch")
        _check(result, q, k, v, causal=True, topk=topk, window=3, softcap=2.0, sinks=sinks)


def test_learned_sink_takes_weight_but_gives_no_value():
    """A sink logit far above every real logit takes nearly all the weight: the real keys' weights (and the output,
    the first-token sink) shrink toward 0 and the entropy toward 0; far below, nothing changes."""
    shape = (1, 2, 1, 50, 50, 16, True)
    q, k, v = make_qkv(shape, torch.float32)
    plain = attention_stats(q, k, v, backend="torch")
    low = attention_stats(q, k, v, sinks=torch.tensor([-80.0, -80.0]), backend="torch")
    high = attention_stats(q, k, v, sinks=torch.tensor([80.0, 80.0]), backend="torch")
    for field in ("entropy", "max_weight", "sink_mass", "mean_distance", "output"):
        torch.testing.assert_close(getattr(low, field), getattr(plain, field))
    assert float(low.learned_sink_mass.max()) < 1e-20
    assert float(high.learned_sink_mass.min()) == pytest.approx(1.0)
    assert float(high.output.abs().max()) < 1e-20 and float(high.entropy.abs().max()) < 1e-20
    assert torch.equal(high.argmax, torch.full_like(high.argmax, -1))


def test_a_window_skips_the_keys_left_of_it(monkeypatch):
    """The torch path never reads keys that no row of a block sees: NaN keys and values left of every window change
    nothing (a window of 16 over 600 keys, blocks of 32 rows)."""
    from attnscope.kernels.attention_stats import chunked

    monkeypatch.setattr(chunked, "ROW_BLOCK", 32)
    monkeypatch.setattr(chunked, "TILE_BYTES", 4 * 3 * 32 * 16)  # tiles of 16 keys
    monkeypatch.setattr(chunked, "TILE_THREADS", 1)  # whatever the thread count
    shape = (1, 3, 1, 600, 600, 16, True)
    q, k, v = make_qkv(shape, torch.float32)
    clean = attention_stats(q, k, v, window=16, backend="torch")
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[:, :, :500], poisoned_v[:, :, :500] = float("nan"), float("nan")
    rows = slice(540, 600)  # their blocks start at 512 or later: every window there starts past key 500
    dirty = attention_stats(q[:, :, rows], poisoned_k[:, :, :600], poisoned_v, window=16, backend="torch")
    for field in ("lse", "entropy", "max_weight", "mean_distance", "output"):
        torch.testing.assert_close(getattr(dirty, field), getattr(clean, field)[:, :, rows])


@pytest.mark.parametrize("bad,message", [
    (dict(window=0), "window must be a positive"),
    (dict(window=2.5), "window must be a positive"),
    (dict(window=4, causal=False), "narrows the causal rule"),
    (dict(sinks=torch.zeros(2)), r"one logit per query head, shape \(3,\)"),
    (dict(sinks=torch.tensor([0.0, float("inf"), 1.0])), "finite"),
])
def test_bad_window_and_sinks(bad, message):
    q, k, v = make_qkv((1, 3, 1, 8, 8, 16, True), torch.float32)
    with pytest.raises(ValueError, match=message):
        attention_stats(q, k, v, **bad)


TRITON_EXTRAS = [dict(window=5), dict(sinks=True), dict(window=40, sinks=True), dict(window=1), dict(softcap=2.0),
                 dict(window=5, softcap=1.0, sinks=True)]


TRITON_CASES = [(shape, name) for shape, name in CASES if name != "fp16"]  # the interpreter is slow: fp32 and bf16


@pytest.mark.parametrize("extra", TRITON_EXTRAS, ids=lambda e: "-".join(f"{k}{v}" for k, v in e.items()))
@pytest.mark.parametrize("shape,dtype_name", TRITON_CASES, ids=[shape_id(*c) for c in TRITON_CASES])
def test_triton_window_and_sinks_match_reference(shape, dtype_name, extra):
    if "window" in extra and not shape[-1]:
        pytest.skip("a sliding window narrows the causal rule")
    q, k, v = make_qkv(shape, DTYPES[dtype_name], logit_scale=3.0 if "softcap" in extra else 1.0)
    extra = dict(extra, sinks=make_sinks(shape[1]) if extra.get("sinks") else None)
    causal, topk = shape[-1], min(5, shape[4])
    result = attention_stats(q, k, v, causal=causal, topk=topk, backend="triton", **extra)
    _check(result, q, k, v, causal=causal, topk=topk, **extra)
