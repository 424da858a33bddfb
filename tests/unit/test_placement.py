"""Devices, dtypes and quantization: how a user's choice resolves on a machine, and the sentences when it cannot.

GPU machines are simulated by patching what torch reports (device count, bf16 support); loading on a real GPU is
benchmarks/gpu_check.py's job. Loading on the CPU in bfloat16 runs for real in tests/integration/test_placement_real.py.
"""

import pytest
import torch

from attnscope import models
from attnscope.models import ModelLoadError, Placement, resolve_placement
from tests.unit.tiny_models import VOCAB, build


@pytest.fixture
def gpus(monkeypatch):
    """A machine with two GPUs that support bfloat16 (as far as resolve_placement can tell)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


def test_auto_is_the_cpu_in_float32_without_a_gpu():
    assert resolve_placement() == Placement(device="cpu", dtype=torch.float32, quantize="none")
    assert resolve_placement("map").device == "cpu"  # a device map over the CPU alone is the CPU
    assert resolve_placement("cpu", "bfloat16").dtype == torch.bfloat16
    assert resolve_placement(" CPU ", "Float16").dtype == torch.float16


def test_auto_is_the_first_gpu_in_bfloat16_with_one(gpus):
    assert resolve_placement() == Placement(device="cuda:0", dtype=torch.bfloat16, quantize="none")
    assert resolve_placement("cuda").device == "cuda:0" and resolve_placement("cuda:1").device == "cuda:1"
    assert resolve_placement("cpu").dtype == torch.float32  # auto precision follows the device
    assert resolve_placement("map").device == "map"


def test_auto_is_float16_on_a_gpu_without_bfloat16(gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_placement().dtype == torch.float16


@pytest.mark.parametrize("choice,message", [
    (dict(device="gpu"), "device must be one of auto, cpu, cuda, map or cuda:N; got 'gpu'"),
    (dict(device="cuda:x"), "device must be one of"),
    (dict(dtype="fp8"), "dtype must be one of auto, float32, bfloat16, float16; got 'fp8'"),
    (dict(quantize="2bit"), "quantize must be one of none, 8bit, 4bit; got '2bit'"),
])
def test_choices_that_do_not_exist(choice, message):
    with pytest.raises(ValueError, match=message):
        resolve_placement(**choice)


@pytest.mark.parametrize("choice,message", [
    (dict(device="cuda"), "device cuda needs a CUDA GPU, and torch sees none on this machine: choose cpu"),
    (dict(device="cuda:1"), "device cuda:1 needs a CUDA GPU"),
    (dict(quantize="8bit"), "8bit weights \\(bitsandbytes\\) need a CUDA GPU: choose quantize none on the CPU."),
])
def test_choices_this_machine_cannot_honour(choice, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_placement(**choice)


def test_a_gpu_that_is_not_there_and_quantization_without_bitsandbytes(gpus, monkeypatch):
    with pytest.raises(ModelLoadError, match=r"There is no cuda:2: this machine has 2 GPUs \(cuda:0 to cuda:1\)"):
        resolve_placement("cuda:2")
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="4bit weights need bitsandbytes: `pip install -r requirements-gpu.txt`"):
        resolve_placement(quantize="4bit")


def test_what_from_pretrained_is_given():
    cpu = Placement(device="cpu", dtype=torch.float32, quantize="none").from_pretrained_kwargs()
    assert cpu == {"dtype": torch.float32}  # no device_map: transformers loads on the CPU as before
    assert Placement("cuda:1", torch.bfloat16, "none").from_pretrained_kwargs() == {
        "dtype": torch.bfloat16, "device_map": "cuda:1"}
    assert Placement("map", torch.bfloat16, "none").from_pretrained_kwargs()["device_map"] == "auto"
    eight = Placement("cuda:0", torch.bfloat16, "8bit").from_pretrained_kwargs()["quantization_config"]
    four = Placement("cuda:0", torch.bfloat16, "4bit").from_pretrained_kwargs()["quantization_config"]
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert four.load_in_4bit and four.bnb_4bit_compute_dtype == torch.bfloat16 and four.bnb_4bit_quant_type == "nf4"


@pytest.mark.parametrize("placement,advice", [
    (Placement("cpu", torch.float32, "none"),
     "choose device map \\(its layers spread over every GPU and the CPU\\), or quantize 8bit or 4bit, or bfloat16."),
    (Placement("map", torch.bfloat16, "4bit"), "choose a smaller model."),
])
def test_a_model_that_does_not_fit_says_what_to_choose(placement, advice):
    with pytest.raises(ModelLoadError, match=f"big-model does not fit in {placement.dtype_name} on "
                                             f"{placement.device}: {advice}"):
        with models._fitting("big-model", placement):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_placed_on_and_memory_in_use():
    model = build("llama")
    assert models.placed_on(model) == {"device": "cpu", "dtype": "float32", "quantize": "none"}
    assert models.placed_on(model.to(torch.bfloat16))["dtype"] == "bfloat16"
    assert models.memory_in_use(model).endswith("GiB resident (this process)")


def test_the_engine_feeds_ids_where_the_model_is():
    """Ids created on the CPU go to the input embedding's device (here the CPU: the call must not move the model)."""
    from attnscope import engine
    from attnscope.capture import input_device

    model = build("llama").to(torch.bfloat16)
    assert input_device(model) == torch.device("cpu")
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(0))
    result = engine.run(model, ids)
    assert result.token_logprobs.device.type == "cpu" and result.token_logprobs.dtype == torch.float32
    assert result.stacked("entropy").device.type == "cpu"
