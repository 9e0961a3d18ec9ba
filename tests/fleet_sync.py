"""Shared by the fleet-sync tests (`sgpo serve` engines in the default suite, real SGLang in the `sglang` tier):
run tests/workers/fleet_sync_worker.py against started engine servers, and compare the engines' scores with
the trainer's."""
from __future__ import annotations

from tests.distributed import load, torchrun

TRANSPORTS = ["tensor", "distributed", "disk"]


def run_fleet_sync(launchers, hf: str, out, nproc: int, worker_args: list[str]) -> tuple[dict, dict]:
    """Wait for the engines, run the worker with every transport, stop the engines; (engines.pt, trainer.pt)."""
    try:
        for launcher in launchers:
            launcher.wait_healthy(timeout_s=300)
        torchrun("fleet_sync_worker.py", nproc, ["--hf", hf, "--out", str(out), "--urls", *[x.url for x in launchers],
                                                 "--transports", *TRANSPORTS, *worker_args], timeout=600)
    finally:
        for launcher in launchers:
            launcher.stop()
    return load(str(out), "engines.pt"), load(str(out), "trainer.pt")


def assert_engines_score_like_the_trainer(engines: dict, trainer: dict, transport: str, tol: float = 1e-4) -> None:
    """Every engine's greedy samples after the ``transport`` sync, scored by the trainer: per token within ``tol``."""
    for engine, scored in zip(engines[transport]["engines"], trainer[transport]):
        for i, (seq, logprobs) in enumerate(zip(engine["sequences"], engine["logprobs"])):
            assert logprobs, f"{engine['url']} generated nothing"
            start = len(seq) - len(logprobs) - 1  # position t scores token t + 1
            mine = scored[i, start:start + len(logprobs)]
            assert max(abs(a - float(b)) for a, b in zip(logprobs, mine)) <= tol, (transport, engine["url"], i)
