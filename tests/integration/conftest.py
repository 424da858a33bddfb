import pytest
import torch

from attnscope.models import ModelSpec, load_model


@pytest.fixture(scope="session")
def smollm2():
    return load_model(ModelSpec("smollm2-135m"))


@pytest.fixture(scope="session")
def minilm():
    return load_model(ModelSpec("minilm-l6"))


@pytest.fixture(scope="session")
def smollm2_eager(smollm2):
    """The same prepared checkpoint, loaded with HF's eager attention (output_attentions)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2.source, dtype=torch.float32, attn_implementation="eager")
    return model.eval()
