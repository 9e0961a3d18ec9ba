"""Plug-ins from the user's own files, named by dotted path: the contract of each kind, and real runs driven by them."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from megatron_sgpo.config import ConfigError, RolloutSection, load_config
from megatron_sgpo.plugins import PluginError, load_object
from megatron_sgpo.rollout.engine import ENGINES, RolloutEngine, SamplingParams
from megatron_sgpo.tasks.dataset import TaskItem
from megatron_sgpo.tasks.registry import BUNDLED_POLICY, TaskSpec, get_task
from megatron_sgpo.tasks.verifiers import get_verifier, make_verifier

USER_PLUGINS = '''
import json, os

from megatron_sgpo.rollout.local import LocalEngine
from megatron_sgpo.tasks.dataset import TaskItem
from megatron_sgpo.tasks.registry import TaskSpec


def quarter(item, response_text):
    """A reward function no built-in verifier gives: 0.25 for everything, and a log line per call."""
    with open(os.environ["REWARD_LOG"], "a") as f:
        f.write(json.dumps([item.id, response_text]) + "\\n")
    return 0.25


class FirstLine:
    name = "first-line"

    def score(self, item, response_text):
        return float(response_text.split("\\n")[0].strip() == item.answer)


def plus_one(size, seed):
    return [TaskItem(f"plus-one-{seed}-{i}", f"Q: {i % 9}+1=\\nA:", str(i % 9 + 1)) for i in range(size)]


TASK = TaskSpec("plus-one", plus_one, verifier="user_plugins:FirstLine")
NOT_A_TASK = 42


def local_engine(rollout, model_path):
    return LocalEngine(model_path)


def not_an_engine(rollout, model_path):
    return "an engine"
'''


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A folder outside the package holding the user's plug-in module, put on sys.path as PYTHONPATH would."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "user_plugins.py").write_text(textwrap.dedent(USER_PLUGINS))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("user_plugins", None)


def sgpo_train(user_dir, out, yaml_text, env=None):
    cfg = user_dir / f"{out.name}.yaml"
    cfg.write_text(textwrap.dedent(yaml_text))
    proc = subprocess.run([sys.executable, "-m", "megatron_sgpo.cli", "train", "--config", str(cfg),
                           f"run.output_dir={out}"], capture_output=True, text=True, timeout=600, cwd=user_dir,
                          env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", **(env or {})))
    assert proc.returncode == 0, proc.stderr[-5000:]
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def run_yaml(data: str, model: str = "{}") -> str:
    """Two GRPO steps of 4 prompts x 3 samples on the bundled policy, with the given data/model sections."""
    return f"""
    run: {{mode: grpo}}
    model: {model}
    data: {{size: 12, eval_size: 6, {data}}}
    plan: {{fixed_n: 3}}
    rollout: {{max_new_tokens: 4}}
    train: {{steps: 2, prompts_per_step: 4, eval_every: 0, checkpoint_every: 0}}
    """


def test_a_reward_function_from_a_user_file_drives_a_real_run(user_dir, tmp_path):
    log = tmp_path / "rewards.log"
    steps = sgpo_train(user_dir, tmp_path / "reward", run_yaml("verifier: user_plugins:quarter"),
                       env={"REWARD_LOG": str(log)})
    assert [s["reward_mean"] for s in steps] == [0.25, 0.25]  # no built-in verifier gives 0.25
    assert all(s["accuracy"] == 0.0 and s["samples"] == 12 for s in steps)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    trained = [pid for s in steps for pid in s["prompts"] for _ in range(3)]
    assert sorted(pid for pid, _ in calls if pid in set(trained)) == sorted(trained)  # every sample was scored by it
    assert len(calls) == len(trained) + 2 * 6  # and the evaluations before and after


def test_a_task_from_a_user_file_drives_a_real_run(user_dir, tmp_path):
    steps = sgpo_train(user_dir, tmp_path / "task", run_yaml("task: user_plugins:TASK", f"{{hf_path: {BUNDLED_POLICY}}}"))
    prompts = [pid for s in steps for pid in s["prompts"]]
    assert len(prompts) == 8 and all(pid.startswith("plus-one-0-") for pid in prompts)
    summary = json.loads((tmp_path / "task" / "summary.json").read_text())
    # the bundled policy adds 1 to a digit almost always: the task's items and its own verifier reached the run
    assert summary["evals"][0]["accuracy"] >= 0.8 and all(s["reward_mean"] > 0.5 for s in steps)


# ---------------------------------------------------------------------- contracts, kind by kind
def test_verifier_contract_function_class_or_object(user_dir):
    item = TaskItem("x", "Q: 1+1=\nA:", "2")
    assert make_verifier("user_plugins:FirstLine").score(item, "2\nQ:") == 1.0  # a class, instantiated
    assert get_verifier("user_plugins:FirstLine").name == "first-line"
    os.environ["REWARD_LOG"] = os.devnull
    assert get_verifier("user_plugins:quarter").score(item, "7") == 0.25  # a function, wrapped
    with pytest.raises(PluginError, match=r"verifier 'user_plugins:NOT_A_TASK' is a int, not a class or object with"):
        make_verifier("user_plugins:NOT_A_TASK")


def test_task_contract_taskspec_or_function(user_dir):
    spec = get_task("user_plugins:TASK")
    assert isinstance(spec, TaskSpec) and spec.verifier == "user_plugins:FirstLine"
    assert spec.make_items(3, 0)[2] == TaskItem("plus-one-0-2", "Q: 2+1=\nA:", "3")
    bare = get_task("user_plugins:plus_one")  # a function: the verifier comes from data.verifier
    assert bare.verifier is None and bare.make_items(2, 5)[1].id == "plus-one-5-1"
    with pytest.raises(ConfigError, match=r"config key data.verifier: data.task=user_plugins:plus_one has no verifier"):
        load_config(None, ["data.task=user_plugins:plus_one"])
    assert load_config(None, ["data.task=user_plugins:plus_one", "data.verifier=exact"]).data.verifier == "exact"
    with pytest.raises(PluginError, match=r"task 'user_plugins:NOT_A_TASK' is a int, not a TaskSpec"):
        get_task("user_plugins:NOT_A_TASK")


def assert_engine_contract(engine: RolloutEngine):
    """What the loop relies on: n completions per prompt, a log-prob per token, versions set by update_weights."""
    out = engine.generate([[1, 2, 3], [4]], [2, 0], SamplingParams(max_new_tokens=3, seed=0))
    assert [len(g) for g in out] == [2, 0]
    assert all(len(c.token_ids) == len(c.logprobs) > 0 and c.prompt_index == 0 for c in out[0])
    name, tensor = next(iter(engine.model.named_parameters()))
    engine.update_weights([(name, tensor.detach().clone())], version=7)
    assert engine.weight_version == 7


@pytest.mark.parametrize("name", ["local", "user_plugins:local_engine"])
def test_engine_contract_builtin_and_user_factory(user_dir, name):
    engine = ENGINES.resolve(name)(RolloutSection(), str(BUNDLED_POLICY))
    assert isinstance(engine, RolloutEngine)
    assert_engine_contract(engine)


def test_engine_that_breaks_the_contract_is_refused_at_start(user_dir):
    from megatron_sgpo.loop.build import _start_rollout

    cfg = load_config(None, ["rollout.engine=user_plugins:not_an_engine"])
    parts = type("Parts", (), {"hf_path": str(BUNDLED_POLICY), "shape": None})()
    with pytest.raises(TypeError, match=r"rollout.engine=user_plugins:not_an_engine made a str, not a RolloutEngine"):
        _start_rollout(parts, cfg, "arith")


def test_dotted_paths_that_do_not_resolve_say_which_part_failed(user_dir):
    with pytest.raises(PluginError, match=r"is not of the form 'package.module:Name'"):
        load_object("user_plugins.quarter", "verifier")
    with pytest.raises(PluginError, match=r"cannot import 'no_such_user_module'"):
        load_object("no_such_user_module:x", "task")
    with pytest.raises(PluginError, match=r"user_plugins has no attribute 'missing'"):
        load_object("user_plugins:missing", "task")
