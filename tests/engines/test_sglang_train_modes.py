"""`sgpo train` against the real SGLang 0.5.23 CPU server with the loop's two overlapping modes (tier `sglang`,
about 2 minutes): partial rollouts (recycled responses resumed under new weights, their stale tokens masked in the
loss) and asynchronous rollouts (staleness 1). SGLang on a CPU cannot run seeded sampling, so these runs are
unseeded (`rollout.seeded=false`) and the checks are invariants, not exact replays."""
import pytest

from megatron_sgpo.platform.dist import free_port
from megatron_sgpo.rollout.launcher import SGLangLauncher
from megatron_sgpo.tasks.registry import BUNDLED_POLICY
from tests.distributed import read_steps, sgpo

from .conftest import SHIMS
from .test_sglang_real import PYTHON

pytestmark = [pytest.mark.sglang, pytest.mark.timeout(900)]
STEPS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("sglang_train") / "server.log"
    launcher = SGLangLauncher.sglang(str(BUNDLED_POLICY), free_port(), device="cpu", max_total_tokens=16384,
                                     python=PYTHON, env={"PYTHONPATH": SHIMS, "OMP_NUM_THREADS": "1"},
                                     log_path=str(log))
    launcher.start(timeout_s=240)
    yield launcher
    launcher.stop()


def train(server, out, *extra):
    sgpo(1, ["train", f"run.output_dir={out}", "run.mode=grpo", "plan.fixed_n=4", "rollout.engine=sglang",
             f"rollout.url={server.url}", "rollout.seeded=false", "rollout.release_memory=false", "data.size=40",
             "data.eval_size=0", f"train.steps={STEPS}", "train.prompts_per_step=4", "train.eval_every=0",
             "train.checkpoint_every=0", "rollout.max_new_tokens=6", "optim.lr=1e-3", *extra])
    return read_steps(str(out))


def test_partial_rollouts_on_real_sglang(server, tmp_path):
    steps = train(server, tmp_path / "partial", "rollout.partial=true", "rollout.partial_inflight=2",
                  "mismatch.max_staleness=0")
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert all(s["samples"] == 16 and s["rollout/carried_groups"] == 4 for s in steps)
    assert steps[0]["rollout/stale_tokens"] == 0
    for s in steps:  # whatever was recycled, the loss saw exactly those tokens as stale and masked them
        assert s["train/stale_tokens"] == s["rollout/stale_tokens"] == s["train/stale_masked_tokens"]
        assert s["rollout/tokens"] >= s["train/tokens"]


def test_asynchronous_rollouts_on_real_sglang(server, tmp_path):
    steps = train(server, tmp_path / "async", "rollout.asynchronous=true", "rollout.max_staleness=1",
                  "mismatch.tis=token")
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    for s in steps:  # step k trains on the weights of step k-1, never older; the real engine reports each version
        assert s["rollout/weight_version"] == max(s["step"] - 2, 0)
        assert s["train/stale_tokens"] == (s["train/tokens"] if s["step"] >= 2 else 0)
        assert s["async/dropped_groups"] == 0
