"""The example recipes cannot rot: every run config loads, its layout fits its model and GPU count,
and the 70B layout is one the cluster planner finds feasible."""
import glob
import os
import re

import pytest

from megatron_sgpo.config import load_config
from megatron_sgpo.model.hf_config import load_hf_config, validate_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
RUN_CONFIGS = sorted(glob.glob(os.path.join(EXAMPLES, "single_node", "*.yaml"))
                     + glob.glob(os.path.join(EXAMPLES, "multi_node", "*.yaml")))
LLAMA_70B = os.path.join(EXAMPLES, "configs", "llama-3.3-70b-config.json")
# The dimensions of Qwen2.5-7B-Instruct's config.json that decide a layout (the weights are not in the repo).
QWEN25_7B = {"architectures": ["Qwen2ForCausalLM"], "num_attention_heads": 28, "num_key_value_heads": 4,
             "num_hidden_layers": 28, "hidden_size": 3584, "vocab_size": 152064}


def test_there_are_recipes_for_one_node_and_many():
    names = [os.path.relpath(p, EXAMPLES) for p in RUN_CONFIGS]
    assert any(n.startswith("single_node/") for n in names) and any(n.startswith("multi_node/") for n in names)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: os.path.relpath(p, EXAMPLES))
def test_example_config_loads_with_overrides_the_launchers_pass(path):
    engines = ("rollout.urls=[http://node0:30000, http://node1:30000]" if "multi_node" in path  # node.sh: one per node
               else "rollout.url=http://127.0.0.1:30000")
    cfg = load_config(path, ["model.hf_path=/models/x", engines, "run.output_dir=/tmp/r"])
    assert cfg.rollout.engine == "sglang" and (cfg.rollout.url or cfg.rollout.urls[1]).startswith("http://")
    assert cfg.model.options.dtype == "auto" and cfg.optim.distributed_optimizer


def _launcher_world(script: str) -> int:
    """nodes x --nproc-per-node as written in a launch script (nodes from #SBATCH --nodes, else 1)."""
    text = open(script).read()
    nproc = int(re.search(r"--nproc-per-node (\d+)", text).group(1))
    sbatch = os.path.join(os.path.dirname(script), "sgpo-70b.sbatch")
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", open(sbatch).read()).group(1)) if "multi_node" in script else 1
    return nodes * nproc


def test_single_node_layout_fits_qwen_7b_on_8_gpus():
    cfg = load_config(os.path.join(EXAMPLES, "single_node", "qwen2.5-7b-gsm8k.yaml"))
    world = _launcher_world(os.path.join(EXAMPLES, "single_node", "launch.sh"))
    assert world == 8
    validate_layout(QWEN25_7B, cfg.model.parallel, world)
    assert cfg.model.parallel.data_parallel_size(world) == 4


def test_multi_node_layout_is_the_planners_feasible_one():
    from dataclasses import replace

    from megatron_sgpo.cluster import EngineLayout, Placement, Planner, TrainSetup, load_inputs
    from megatron_sgpo.platform.layout import ParallelLayout

    cfg = load_config(os.path.join(EXAMPLES, "multi_node", "llama-3.3-70b.yaml"),
                      ["rollout.urls=[http://node0:30000, http://node1:30000]"])
    world = _launcher_world(os.path.join(EXAMPLES, "multi_node", "node.sh"))
    p = cfg.model.parallel
    assert world == 64
    validate_layout(load_hf_config(LLAMA_70B), p, world)
    layout = ParallelLayout(tp=p.tp, pp=p.pp, cp=p.cp, dp=p.data_parallel_size(world),
                            sequence_parallel=p.sequence_parallel)
    planner = Planner(load_inputs(LLAMA_70B, os.path.join(EXAMPLES, "clusters", "h100-8x8-grpo-70b.yaml")))
    recompute = cfg.model.options.recompute or "none"
    cand = planner.evaluate(TrainSetup(layout, recompute=recompute), EngineLayout(tp=8, engines=8),
                            Placement(True, 8, 8))
    assert cand.feasible, cand.as_dict()
    # the same layout without sequence parallelism is the one the planner rejects for memory
    no_sp = planner.evaluate(TrainSetup(replace(layout, sequence_parallel=False)),
                             EngineLayout(tp=8, engines=8), Placement(True, 8, 8))
    assert not no_sp.feasible
    script = open(os.path.join(EXAMPLES, "multi_node", "node.sh")).read()
    assert "--tp-size 8" in script  # the engine TP the planner was asked about
    # and as many engines as the planner's row: one per node (8), every one in rollout.urls
    assert cfg.rollout.weight_sync == "distributed" and 'rollout.urls="$URLS"' in script
    assert 'NODE_RANK" = 0' not in script.split("launch_server")[0]  # no node skips starting its engine


def test_the_cpu_example_loads_as_its_script_runs_it():
    """examples/cpu: vLLM without top-k/top-p (else refused at load), one rank, the math verifier."""
    cfg = load_config(os.path.join(EXAMPLES, "cpu", "smollm2-gsm8k.yaml"), ["run.output_dir=/tmp/r"])
    assert cfg.rollout.engine == "vllm" and cfg.data.verifier == "math" and cfg.model.parallel.tp == 1
    assert "smollm2-gsm8k.yaml" in open(os.path.join(EXAMPLES, "cpu", "run_smollm2.sh")).read()
