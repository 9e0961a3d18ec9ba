"""The shipped GPU recipes stay honest: each has a tiny copy in examples/tiny/ with the same keys and features (only
sizes, world size and engine differ), and that copy runs 3 steps under torchrun on gloo (4 ranks), against two
`sgpo serve` engines where the recipe has several engine servers.

Marked ``recipes`` (a few minutes on 2 cores): deselected from the default run, run by .ci/run as its own tier.
"""
import importlib.util
import json
import os
import sys

import pytest
import yaml

from megatron_sgpo.platform.dist import free_port
from megatron_sgpo.rollout.launcher import SGLangLauncher
from tests.distributed import run_to_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RECIPES = {  # tiny copy -> (recipe, model family, ranks)
    "qwen2.5-7b-gsm8k.yaml": ("single_node/qwen2.5-7b-gsm8k.yaml", "qwen2", 4),
    "llama-3.3-70b.yaml": ("multi_node/llama-3.3-70b.yaml", "llama", 4),
}
# what a tiny copy may change: where it writes and reads, sizes, world size, engine
SWAPPABLE = {"run.output_dir", "model.hf_path", "model.parallel.tp", "model.parallel.pp",
             "model.options.max_sequence_length", "data.size", "data.eval_size", "profile.chunk_prompts",
             "plan.n_max", "plan.step_rollout_budget", "rollout.engine", "rollout.url", "rollout.max_new_tokens",
             "rollout.bucket_mb", "rollout.tp_size", "train.steps", "train.prompts_per_step", "train.checkpoint_every"}


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        out.update(flat(value, dotted + ".") if isinstance(value, dict) else {dotted: value})
    return out


def load(path: str) -> dict:
    with open(os.path.join(ROOT, "examples", path)) as f:
        return flat(yaml.safe_load(f))


@pytest.mark.parametrize("tiny", sorted(RECIPES))
def test_tiny_copy_has_the_recipes_keys_and_features(tiny):
    recipe, copy = load(RECIPES[tiny][0]), load(f"tiny/{tiny}")
    assert copy.keys() == recipe.keys()
    differing = {k for k in recipe if recipe[k] != copy[k]}
    assert differing <= SWAPPABLE, sorted(differing - SWAPPABLE)


@pytest.mark.recipes
@pytest.mark.parametrize("tiny", sorted(RECIPES))
def test_tiny_copy_runs_three_steps_under_torchrun(tiny, tmp_path):
    _, family, ranks = RECIPES[tiny]
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", os.path.join(ROOT, "tools",
                                                                                       "make_tiny_checkpoint.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = tool.make(family, str(tmp_path / f"tiny-{family}"))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "megatron_sgpo.cli", "train", "--config",
           os.path.join(ROOT, "examples", "tiny", tiny), f"model.hf_path={model}", f"run.output_dir={out}"]
    servers = []  # a copy of a recipe with several engine servers gets two `sgpo serve` engines
    if load(f"tiny/{tiny}")["rollout.engine"] == "serve":
        servers = [SGLangLauncher.sgpo(model, free_port(), extra_args=["--threads", "1"]).start(wait=False)
                   for _ in range(2)]
        cmd.append(f"rollout.urls=[{', '.join(s.url for s in servers)}]")
    try:
        for server in servers:
            server.wait_healthy(timeout_s=120)
        proc = run_to_files(cmd, timeout=1500)
    finally:
        for server in servers:
            server.stop()
    assert proc.returncode == 0, proc.stderr[-6000:]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    trained = [s for s in steps if "train/optimizer_steps" in s]
    assert trained and all(s["train/optimizer_steps"] == 4 for s in trained)  # the recipes' 4 PPO mini-batches
    assert all("train/mismatch_abs_sum" in s and s["train/lr"] >= 0 for s in trained)
    with open(out / "checkpoints" / "latest") as f:
        assert json.load(f)["dir"] == "step_2"  # the copies checkpoint at step 2 (distributed optimizer included)
    recipe = load(RECIPES[tiny][0])
    assert (out / "hf" / "model.safetensors").exists() == recipe.get("train.export_hf", False)
