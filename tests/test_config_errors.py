"""Impossible layouts and bad run configs fail at start, with errors that name the numbers or keys."""
import pytest

from megatron_sgpo.config import load_config
from megatron_sgpo.model.build import ModelOptions, transformer_config
from megatron_sgpo.model.hf_config import padded_vocab_size, validate_layout
from megatron_sgpo.platform.layout import ParallelLayout

CFG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 6,
       "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000}


@pytest.mark.parametrize("sizes, world, message", [
    (ParallelLayout(tp=4), 4, r"num_attention_heads=6 is not divisible by tensor parallel size tp=4"),
    (ParallelLayout(tp=3), 3, r"num_key_value_heads=2 is not divisible by tensor parallel size tp=3"),
    (ParallelLayout(pp=4), 4, r"num_hidden_layers=6 is not divisible by pp\*vpp=4\*1=4"),
    (ParallelLayout(pp=2, vpp=2), 4, r"num_hidden_layers=6 is not divisible by pp\*vpp=2\*2=4"),
    (ParallelLayout(tp=2), 3, r"world size 3 is not divisible by tp\*pp\*cp = 2\*1\*1 = 2"),
])
def test_impossible_layouts_name_the_numbers(sizes, world, message):
    with pytest.raises(ValueError, match=message):
        validate_layout(CFG, sizes, world)


def test_valid_layout_passes_and_gives_dp():
    validate_layout(CFG, ParallelLayout(tp=2, pp=3), 12)
    assert ParallelLayout(tp=2, pp=3).data_parallel_size(12) == 2


def test_unknown_architecture():
    with pytest.raises(ValueError, match=r"unsupported architectures \['GPT2LMHeadModel'\]"):
        validate_layout(dict(CFG, architectures=["GPT2LMHeadModel"]), ParallelLayout(), 1)


def test_explicit_dp_must_match_the_world_size():
    assert ParallelLayout(tp=2).with_world(8).dp == 4
    with pytest.raises(ValueError, match=r"dp=2 but world size 8 / \(tp\*pp\*cp=2\) gives dp=4"):
        ParallelLayout(tp=2, dp=2).with_world(8)


def test_vocab_padding_is_the_same_at_every_tp():
    assert {padded_vocab_size(1000, 128, tp) for tp in (1, 2, 4, 8)} == {1024}
    assert padded_vocab_size(1025, 128, 1) == 2048 and padded_vocab_size(1000, 16, 1) == 1024
    with pytest.raises(ValueError, match=r"tp=3 does not divide the padded vocabulary of 1024 rows"):
        validate_layout(dict(CFG, num_attention_heads=6, num_key_value_heads=3), ParallelLayout(tp=3), 3)


def test_fp8_without_transformer_engine_is_refused():
    with pytest.raises(ValueError, match=r"fp8='e4m3' needs Transformer Engine and a CUDA GPU"):
        transformer_config(CFG, ParallelLayout(fp8="e4m3"), ModelOptions())
    with pytest.raises(ValueError, match=r"fp8_recipe must be one of"):
        ParallelLayout(fp8="e4m3", fp8_recipe="fast")


def test_unsupported_rope_scaling_is_refused():
    from megatron_sgpo.model.build import _rope_kwargs

    with pytest.raises(ValueError, match=r"rope_scaling type 'yarn' is not supported"):
        _rope_kwargs(dict(CFG, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    assert _rope_kwargs(dict(CFG, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5})) == {
        "rotary_base": 5e5, "seq_len_interpolation_factor": 2.0}


def test_run_config_unknown_key_names_dotted_path(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\): train.stepz"):
        load_config(str(path))


def test_run_config_overrides_and_section_validation():
    cfg = load_config(None, ["train.steps=3", "plan.n_max=16", "model.parallel.tp=2", "rollout.stop=[x, y]"])
    assert cfg.train.steps == 3 and cfg.plan.n_max == 16 and cfg.model.parallel.tp == 2
    assert cfg.rollout.stop == ("x", "y")
    with pytest.raises(ValueError, match=r"invalid config section plan: n_min must be <= n_max"):
        load_config(None, ["plan.n_min=8", "plan.n_max=4"])
    with pytest.raises(ValueError, match=r"config key run.mode: 'ppo' is not one of 'sgpo', 'grpo', 'dapo'"):
        load_config(None, ["run.mode=ppo"])
    with pytest.raises(ValueError, match=r"must look like key.sub=value"):
        load_config(None, ["train.steps"])


def test_scalars_are_coerced_to_the_field_type():
    cfg = load_config(None, ["optim.lr=3e-4", "train.steps=4", "plan.drop_above=1", "data.train_file=12"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.plan.drop_above == 1.0 and isinstance(cfg.plan.drop_above, float)
    assert cfg.data.train_file == "12"
    with pytest.raises(ValueError, match=r"config key train.steps: 'many' is not a int"):
        load_config(None, ["train.steps=many"])


