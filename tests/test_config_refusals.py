"""A run config never accepts what cannot run: every refused setting fails at load, naming its key."""
import pytest

from megatron_sgpo.config import ConfigError, check_platform, load_config


@pytest.mark.parametrize("overrides, key, why", [
    (["loss.kl_coef=0.1", "loss.kl_in=reward", "selection.cost_aware=true"], "loss.kl_in", "importance-weighted"),
    (["loss.kl_coef=0.1", "loss.kl_in=reward", "grsp.coef=0.1"], "loss.kl_in", "grsp.target=reward"),
    (["rollout.weight_sync=distributed"], "rollout.weight_sync", "rollout.engine=local runs inside rank 0"),
    (["rollout.engine=vllm", "rollout.weight_sync=disk"], "rollout.weight_sync", "rollout.engine=vllm runs inside"),
    (["model.parallel.cp=2"], "model.parallel.cp", "context parallelism is not implemented"),
    (["online.enabled=true", "run.mode=grpo"], "online.enabled", "only run.mode=sgpo makes"),
    (["selection.refill=true"], "selection.refill", "set selection.zero_variance=true"),
    (["plan.allocation=budgeted", "plan.step_rollout_budget=64", "run.mode=dapo"], "plan.allocation",
     "only run.mode=sgpo makes"),
    (["profile.sequential=true", "run.mode=grpo"], "profile.sequential", "run.mode=grpo does not profile"),
    (["rollout.engine=vllm", "rollout.top_p=0.9"], "rollout.top_p", "renormalises over the top-k/top-p support"),
    (["rollout.engine=sglang"], "rollout.url", "rollout.url, which is empty"),
    (["rollout.engine=serve", "rollout.url=http://a:1", "rollout.urls=[http://b:1]"], "rollout.urls",
     "set rollout.url .* or rollout.urls .*, not both"),
    (["rollout.engine=local", "rollout.urls=[http://a:1]"], "rollout.urls", "rollout.engine=local runs in-process"),
    (["rollout.engine=vllm", "rollout.urls=[http://a:1]"], "rollout.urls", "rollout.engine=vllm runs in-process"),
    (["rollout.engine=sglang", "rollout.urls=[http://a:1, http://b:1, http://a:1]"], "rollout.urls",
     "lists http://a:1 more than once"),
    (["data.task=jsonl"], "data.train_file", "data.train_file, which is empty"),
    (["data.task=tests_no_such_module:TASK"], "data.task", "cannot import 'tests_no_such_module'"),
    (["data.verifier=megatron_sgpo.tasks.verifiers:NoSuch"], "data.verifier", "has no attribute 'NoSuch'"),
    (["data.verifier=nope"], "data.verifier", "unknown verifier 'nope'"),
    (["data.system_prompt=Be brief.", "data.chat_template=never"], "data.system_prompt", "needs the chat template"),
])
def test_setting_that_cannot_run_is_refused_naming_the_key(overrides, key, why):
    with pytest.raises(ConfigError, match=rf"config key {key}: .*{why}"):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides, section, why", [
    (["mismatch.mask_low=0.5"], "mismatch", "mask_low and mask_high are set together"),
    (["mismatch.mask_low=1.5", "mismatch.mask_high=2"], "mismatch", "masking needs 0 <= mask_low < 1 < mask_high"),
    (["optim.lr_warmup_steps=10", "optim.lr_decay_steps=5"], "optim", "lr_warmup_steps=10 must be < lr_decay_steps=5"),
    (["optim.min_lr=1", "optim.lr=0.1"], "optim", r"min_lr must be in \[0, lr=0.1\]"),
    (["train.mini_batches=0"], "train", "train.mini_batches must be >= 1"),
    (["plan.allocation=budgeted"], "plan", "allocation 'budgeted' needs step_rollout_budget set"),
    (["profile.unsolvable_below=0.8"], "profile", "need 0 < unsolvable_below < solved_above < 1"),
])
def test_sections_refuse_impossible_values(overrides, section, why):
    with pytest.raises(ConfigError, match=rf"invalid config section {section}: {why}"):
        load_config(None, overrides)


def test_the_refused_settings_load_when_set_to_what_runs():
    cfg = load_config(None, ["loss.kl_coef=0.1", "rollout.weight_sync=tensor", "model.parallel.cp=1",
                             "optim.distributed_optimizer=true", "train.checkpoint_every=0",
                             "rollout.engine=sglang", "rollout.url=http://127.0.0.1:1"])
    assert cfg.optim.distributed_optimizer and cfg.rollout.engine == "sglang"
    several = load_config(None, ["rollout.engine=serve", "rollout.urls=[http://127.0.0.1:1, http://127.0.0.1:2]"])
    assert several.rollout.urls == ("http://127.0.0.1:1", "http://127.0.0.1:2") and not several.rollout.url


@pytest.mark.parametrize("old, new", [
    ("online.online=true", "online.enabled"),
    ("train.grpo_n=4", "plan.fixed_n"),
    ("train.selection=cost_aware", "selection.zero_variance and selection.cost_aware"),
    ("model.options.fp8=e4m3", "model.parallel.fp8"),
])
def test_moved_keys_name_their_new_place(old, new):
    with pytest.raises(ConfigError, match=rf"config key {old.split('=')[0]} has moved: use {new}"):
        load_config(None, [old])


def test_removed_key_says_why():
    with pytest.raises(ConfigError, match=r"config key train.log_every was removed: every step is logged"):
        load_config(None, ["train.log_every=1"])


def test_enumerations_are_checked_generically_with_the_dotted_key():
    for override in ["loss.kind=trpo", "plan.order=random", "grsp.target=length", "model.options.dtype=fp16",
                     "model.parallel.fp8=e5m2", "data.chat_template=sometimes", "rollout.weight_sync=nccl"]:
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=rf"config key {key}: '.*' is not one of"):
            load_config(None, [override])


def test_run_mode_is_a_preset_that_may_be_repeated_but_not_contradicted():
    assert load_config(None, ["run.mode=dapo"]).selection.zero_variance
    both = load_config(None, ["run.mode=dapo", "selection.zero_variance=true", "selection.cost_aware=true"])
    assert both.selection.zero_variance and both.selection.cost_aware
    assert not load_config(None, ["run.mode=grpo"]).selection.zero_variance
    with pytest.raises(ConfigError, match=r"config key selection.zero_variance=False contradicts run.mode=dapo"):
        load_config(None, ["run.mode=dapo", "selection.zero_variance=false"])


@pytest.mark.parametrize("overrides, key, why", [
    (["model.parallel.fp8=e4m3"], "model.parallel.fp8", "needs Transformer Engine and a CUDA GPU"),
    (["model.hf_path=/no/such/model"], "model.hf_path", "/no/such/model does not exist"),
    (["data.task=jsonl", "data.train_file=/no/such.jsonl", "data.verifier=exact"], "data.train_file", "does not exist"),
])
def test_what_this_cpu_machine_cannot_run_is_refused_before_any_compute(overrides, key, why):
    cfg = load_config(None, overrides)  # a valid config (a GPU recipe is validated on CPU machines too)
    with pytest.raises(ConfigError, match=rf"config key {key}: .*{why}"):
        check_platform(cfg)
