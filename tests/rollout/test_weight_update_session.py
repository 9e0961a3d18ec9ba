"""An in-process engine gets one weight update around all buckets of a sync, closed also when a bucket fails."""
import pytest
import torch

from megatron_sgpo.rollout.engine import RolloutEngine
from megatron_sgpo.weights import sync


class Recorder(RolloutEngine):
    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def generate(self, prompts, n_per_prompt, params):
        raise NotImplementedError

    def begin_weight_update(self, version):
        self.calls.append(("begin", version))

    def update_weights(self, named_tensors, version):
        names = [n for n, _ in named_tensors]
        if names[0] == self.fail_at:
            raise RuntimeError("bucket refused")
        self.calls.append(("bucket", names, version))

    def end_weight_update(self, version):
        self.calls.append(("end", version))

    weight_version = 0

    def abort(self):
        pass

    def health(self):
        return True


def three_tensors():
    return iter([(n, torch.zeros(4)) for n in "abc"])  # 16 bytes each


def test_one_session_around_every_bucket():
    engine = Recorder()
    stats = sync.deliver(engine, three_tensors(), version=3, bucket_bytes=32)
    assert engine.calls == [("begin", 3), ("bucket", ["a", "b"], 3), ("bucket", ["c"], 3), ("end", 3)]
    assert stats["buckets"] == 2 and stats["tensors"] == 3


def test_a_failed_bucket_still_ends_the_session():
    engine = Recorder(fail_at="c")
    with pytest.raises(RuntimeError, match="bucket refused"):
        sync.deliver(engine, three_tensors(), version=4, bucket_bytes=32)
    assert engine.calls[0] == ("begin", 4) and engine.calls[-1] == ("end", 4)


def test_engines_without_a_session_need_nothing(local_engine):
    """The base class's hooks are no-ops: LocalEngine takes the buckets as before."""
    norm = dict(local_engine.model.named_parameters())["model.norm.weight"]
    version = local_engine.weight_version + 1
    sync.deliver(local_engine, iter([("model.norm.weight", norm)]), version=version, bucket_bytes=2**20)
    assert local_engine.weight_version == version
