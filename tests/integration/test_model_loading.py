"""Loading by alias, local folder and hub id; the GGUF preparation; clear errors."""

import pytest
import torch

from attnscope import models
from attnscope.models import ModelLoadError, ModelSpec, load_model

pytestmark = pytest.mark.slow


def test_prepared_checkpoint_is_plain_and_local_folder_loads(smollm2):
    config = (models.prepared_folder("smollm2-135m") / "config.json").read_text()
    assert "quantization_config" not in config
    assert not models.needs_preparation(ModelSpec("smollm2-135m"))
    by_folder = load_model(ModelSpec(str(models.prepared_folder("smollm2-135m"))))
    assert by_folder.kind == "decoder"
    for (name, a), (_, b) in zip(by_folder.model.state_dict().items(), smollm2.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_preparation_reproduces_the_gguf_model(tmp_path, monkeypatch):
    """Dequantize into a fresh cache folder: the saved plain model computes what the GGUF model computes."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("ATTNSCOPE_CACHE", str(tmp_path))
    spec = ModelSpec("smollm2-135m")
    assert models.needs_preparation(spec)
    steps = []
    models.prepare_packaged_model("smollm2-135m", progress=lambda fraction, message: steps.append(fraction))
    assert steps[-1] == 1.0 and steps == sorted(steps)
    assert not models.needs_preparation(spec)
    prepared = load_model(spec)
    packaged = models.PACKAGED_MODELS["smollm2-135m"]
    gguf = AutoModelForCausalLM.from_pretrained(models.package_folder(packaged), gguf_file=packaged.gguf_file,
                                                dtype=torch.float32).eval()
    ids = prepared.tokenizer("Attention is all you need", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(prepared.model(input_ids=ids).logits, gguf(input_ids=ids).logits,
                                   rtol=0, atol=1e-4)


def test_hub_id_offline_gives_one_clear_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Could not fetch 'someone/no-such-model-attnscope'") as error:
        load_model(ModelSpec("someone/no-such-model-attnscope"))
    assert "local folder" in str(error.value)


def test_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec("/no/such/folder"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(ModelSpec(str(tmp_path)))


def test_trust_remote_code_is_off_by_default():
    assert ModelSpec("anything").trust_remote_code is False
