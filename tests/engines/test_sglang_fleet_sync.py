"""Two real SGLang 0.5.23 CPU servers fed by a PP=2 megatron policy (2 gloo ranks), each stage's sender sending
its own layers over every transport (tier `sglang`, about 2 minutes): both servers then score their greedy
samples as the trainer does."""
import pytest

from megatron_sgpo.platform.dist import free_port
from megatron_sgpo.rollout.launcher import SGLangLauncher
from tests.fleet_sync import TRANSPORTS, assert_engines_score_like_the_trainer, run_fleet_sync

from .conftest import SHIMS
from .test_sglang_real import PYTHON

pytestmark = [pytest.mark.sglang, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def synced(engine_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sglang_fleet_sync")
    launchers = [SGLangLauncher.sglang(engine_model_dir, free_port(), device="cpu", max_total_tokens=16384,
                                       python=PYTHON, env={"PYTHONPATH": SHIMS, "OMP_NUM_THREADS": "1"},
                                       log_path=str(out / f"sglang{i}.log")).start(wait=False) for i in range(2)]
    return run_fleet_sync(launchers, engine_model_dir, out, 2, ["--pp", "2"])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_both_real_servers_score_like_the_trainer_at_the_new_version(synced, transport):
    engines, trainer = synced
    assert [e["version"] for e in engines[transport]["engines"]] == [TRANSPORTS.index(transport) + 1] * 2
    assert_engines_score_like_the_trainer(engines, trainer, transport)


def test_each_stage_sent_its_own_layers(synced):
    counts = synced[0]["tensor"]["counts"]
    assert [c["sender"] for c in counts] == [True, True]  # PP=2: one sender per stage, no rank-0 funnel
    assert all(c["tensors"] > 0 and c["full_tensors"] == c["tensors"] for c in counts)


def test_at_tp1_the_servers_read_the_trainers_parameters_with_no_copy_on_its_side(synced):
    counts = synced[0]["tensor"]["counts"]
    assert [c["packed_bytes"] for c in counts] == [0, 0] and all(c["bytes"] > 0 for c in counts)
