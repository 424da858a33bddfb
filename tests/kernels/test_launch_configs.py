"""Every configuration of the launch table (kernels/launch.py) computes the reference's numbers: each distinct tile
shape of each kernel and precision, run under the interpreter on a small shape through the public functions, with the
table entry forced, against the fp64 references in kernels/*/naive.py. The interpreter ignores warps and stages, so
the tile shapes are what can change the numbers; benchmarks/gpu_compile.py checks the rest on real targets."""

import pytest
import torch

from attnscope.kernels import attention_stats, launch, pooled_attention_map, taylor_attention
from attnscope.kernels.contributions import contribution_scores
from attnscope.kernels.pooled_map import naive as pooled_naive
from attnscope.kernels.taylor import naive as taylor_naive
from tests.kernels.helpers import DEVICE, assert_within_rule, check_attention_stats, make_qkv
from tests.kernels.test_contributions import check_scores, make_parts

DTYPE = {"16-bit": ("bf16", torch.bfloat16), "fp32": ("fp32", torch.float32)}
# An awkward head dim in each bucket: the kernels pad it to the bucket (BLOCK_D) and mask the rest. For the kernels
# keyed by no head dim, a width that is no multiple of their chunk of it.
HEAD_DIM = {64: 40, 128: 80, 256: 144, launch.ANY_HEAD_DIM: 40}


def distinct_entries() -> list[tuple]:
    """One table key for each distinct (kernel, variant, precision, block_m, block_n)."""
    first = {}
    for key, config in launch.TABLE.items():
        kernel, _, _, precision, variant = key
        first.setdefault((kernel, variant, precision, config.block_m, config.block_n), key)
    return sorted(first.values())


def entry_id(key) -> str:
    kernel, arch, head_dim, precision, variant = key
    config = launch.TABLE[key]
    return "-".join(filter(None, (kernel, variant, precision, f"{config.block_m}x{config.block_n}", arch,
                                  f"D{head_dim}" if head_dim != launch.ANY_HEAD_DIM else "")))


def test_the_table_covers_every_key_and_fits_its_kernels():
    keys = {(kernel, arch, head_dim, precision, variant) for kernel in launch.KERNELS for arch in launch.ARCHS
            for head_dim in launch.head_dims(kernel) for precision in launch.PRECISIONS
            for variant in launch.VARIANTS.get(kernel, ("",))}
    assert set(launch.TABLE) == keys
    for (kernel, *_), config in launch.TABLE.items():
        assert config.block_m >= 16 and config.block_n >= 16 and config.num_warps in (4, 8) and config.num_stages >= 1
        if kernel == "pooled_map_packed":  # the packed kernel takes blocks up to min(block_m, block_n)
            assert min(config.block_m, config.block_n) >= 32


def test_kernels_keyed_by_no_head_dim_ignore_it_and_the_others_need_it():
    device = torch.device(DEVICE)
    assert launch.launch_config("contribution_l1", device=device, dtype=torch.float32) == launch.launch_config(
        "contribution_l1", device=device, dtype=torch.float32, head_dim=4096)
    with pytest.raises(ValueError, match="pass head_dim"):
        launch.launch_config("attention_stats", device=device, dtype=torch.float32, variant="no_v")


@pytest.mark.parametrize("head_dim,bucket", [(1, 64), (16, 64), (64, 64), (65, 128), (128, 128), (200, 256),
                                             (256, 256), (512, 256)])
def test_head_dims_fall_in_the_bucket_they_are_padded_to(head_dim, bucket):
    assert launch.head_dim_bucket(head_dim) == bucket


@pytest.mark.parametrize("key", distinct_entries(), ids=entry_id)
def test_each_table_configuration_matches_the_reference(key, monkeypatch):
    kernel, arch, head_dim, precision, variant = key
    monkeypatch.setattr(launch, "INTERPRETER_ARCH", arch)  # the interpreter launches this architecture's entries
    config = launch.TABLE[key]
    length = config.block_m + config.block_n // 2 + 3  # several query tiles and key steps, a ragged last one
    shape = (1, 2, 1, length, length, HEAD_DIM[head_dim], True)
    name, dtype = DTYPE[precision]
    q, k, v = make_qkv(shape, dtype)
    if q.device.type == "cuda" and launch.arch_family(q.device) != arch:  # benchmarks/gpu_check.py on a real GPU
        pytest.skip(f"a {arch} entry: this GPU launches the {launch.arch_family(q.device)} ones")
    assert launch.launch_config(kernel, device=q.device, head_dim=q.shape[-1], dtype=dtype, variant=variant) == config
    if kernel in ("attention_stats", "attention_topk"):
        v = v if variant == "with_v" else None
        topk = 5 if kernel == "attention_topk" else 0
        check_attention_stats(attention_stats(q, k, v, topk=topk, backend="triton"), q, k, v, causal=True,
                              topk=topk)
    elif kernel.startswith("pooled_map"):
        packed = launch.launch_config("pooled_map_packed", device=q.device, head_dim=q.shape[-1], dtype=dtype)
        side = min(packed.block_m, packed.block_n)  # the largest block the packed kernel takes
        blocks = (3, side) if kernel == "pooled_map_packed" else (side + 1,)
        for block, reduce in zip(blocks, ("mean", "max")):
            result = pooled_attention_map(q, k, block=block, reduce=reduce, backend="triton")
            reference = pooled_naive.pooled_attention_map(q, k, block=block, reduce=reduce)
            plain = pooled_naive.pooled_attention_map(q, k, block=block, reduce=reduce, dtype=dtype)
            assert_within_rule(result, reference, plain, what=f"{name} block {block} {reduce}")
    elif kernel == "contribution_l1":  # block_m queries, block_n keys
        shape = (2, config.block_m + 3, length, HEAD_DIM[head_dim])
        parts = make_parts(shape, dtype, factor=True)
        whole, values, weights, factor = parts
        check_scores(contribution_scores(whole, values, weights, factor=factor, backend="triton"), *parts, norm=1,
                     what=f"{name} L1")
    else:
        result = taylor_attention(q, k, v, order=3, denominator="softmax", backend="triton")
        reference = taylor_naive.taylor_attention(q, k, v, order=3, denominator="softmax")
        plain = taylor_naive.taylor_attention(q, k, v, order=3, denominator="softmax", dtype=torch.float32)
        assert_within_rule(result, reference, plain, what=f"{name} order 3", floor=1e-5)
