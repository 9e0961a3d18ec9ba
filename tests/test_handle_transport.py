"""The tensor-handle weight transport: persistent shared-memory buckets, two in flight, never overwritten early."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from megatron_sgpo.model.hf_io import own_bytes
from megatron_sgpo.weights.tensor_handles import FLATTENED, deserialize_named_tensors, flatten_bucket
from megatron_sgpo.weights.transports import HandleTransport, in_shared_memory, share_cpu_parameters


class RecordingClient:
    """Stands in for an engine's HTTP client: decodes each bucket as the engine would and keeps a copy of it,
    with the name of the shared-memory file it came in."""

    url, tp_size = "http://engine", 1

    def __init__(self, hold=None):
        self.received, self.files, self.formats, self.hold = [], set(), [], hold

    def request(self, method, path, body, retry=True):
        assert (method, path) == ("POST", "/update_weights_from_tensor")
        self.formats.append(body["load_format"])
        named = deserialize_named_tensors(body["serialized_named_tensors"][0], body["load_format"])
        self.files.update(t.untyped_storage()._share_filename_cpu_()[1] for _, t in named)
        if self.hold is not None:
            self.hold(named)
        self.received.append([(n, t.clone()) for n, t in named])
        return {"success": True}


def _bucket(i):
    return [(f"w{i}", torch.full((1000,), float(i))), (f"b{i}", torch.arange(7, dtype=torch.bfloat16) + i)]


def test_flatten_fills_the_buffer_it_is_given_and_refuses_one_of_the_wrong_size():
    buf = torch.zeros(256, dtype=torch.uint8)
    flat = flatten_bucket([("a", torch.ones(4))], lambda n, d: buf[:n])
    assert flat["flattened_tensor"].data_ptr() == buf.data_ptr()
    assert torch.equal(buf[:16].view(torch.float32), torch.ones(4))
    with pytest.raises(ValueError, match="a bucket of 16 bytes on cpu needs a uint8 buffer of that size"):
        flatten_bucket([("a", torch.ones(4))], lambda n, d: buf[:8])


def test_buckets_reuse_two_shared_memory_files_and_arrive_intact():
    client = RecordingClient()
    transport = HandleTransport([client])
    try:
        for i in range(5):
            transport.send(_bucket(i), version=1)
    finally:
        transport.close()
    assert len(client.files) == 2  # five buckets through the same two, already mapped, files
    assert client.formats == [FLATTENED] * 5 and transport.packed_bytes >= 5 * 4014
    for i, got in enumerate(client.received):
        assert [n for n, _ in got] == [n for n, _ in _bucket(i)]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(got, _bucket(i)))


def test_a_bucket_in_flight_is_not_overwritten_by_the_next_one():
    """Bucket 1 is packed and delivered while the engine still holds bucket 0; bucket 0 must read as sent."""
    second_arrived = threading.Event()
    seen_first_after = []

    def hold(named):
        if named[0][0] == "w0":
            assert second_arrived.wait(30), "the second bucket was not sent while the first was in flight"
            seen_first_after.append(named[0][1].clone())
        else:
            second_arrived.set()

    client = RecordingClient(hold)
    transport = HandleTransport([client])
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(transport.send, _bucket(0), 1)
            pool.submit(transport.send, _bucket(1), 1).result(30)
            first.result(30)
        transport.send(_bucket(2), 1)
    finally:
        transport.close()
    assert torch.equal(seen_first_after[0], _bucket(0)[0][1])
    assert len(client.files) == 2
    assert sorted(got[0][0] for got in client.received) == ["w0", "w1", "w2"]


def test_safetensors_get_a_view_as_its_own_bytes_and_a_whole_tensor_as_is():
    whole = torch.randn(4, 3)
    half = whole.chunk(2)[1]
    assert own_bytes(whole).data_ptr() == whole.data_ptr()
    copied = own_bytes(half)
    assert copied.data_ptr() != half.data_ptr() and torch.equal(copied, half)
    assert copied.untyped_storage().nbytes() == half.numel() * half.element_size()


def test_share_cpu_parameters_moves_their_storage_in_place_once():
    layer = torch.nn.Linear(8, 6)
    view = layer.weight.detach()[:3]  # taken before the move: it follows the storage
    assert not in_shared_memory([("w", view)])
    assert share_cpu_parameters([layer]) == (8 * 6 + 6) * 4
    assert in_shared_memory([("w", view), ("b", layer.bias.detach())])
    assert share_cpu_parameters([layer]) == 0
    with torch.no_grad():
        layer.weight.add_(1)
    assert torch.equal(view, layer.weight.detach()[:3])


def test_too_little_shared_memory_is_refused_before_any_parameter_moves(monkeypatch):
    from types import SimpleNamespace

    from megatron_sgpo.weights import transports

    layer = torch.nn.Linear(8, 6)
    monkeypatch.setattr(transports.shutil, "disk_usage", lambda path: SimpleNamespace(free=100))
    with pytest.raises(RuntimeError, match=r"shared memory, but /dev/shm has 0.00 GiB free: enlarge it \(docker run "
                                           r"--shm-size\) or use rollout.weight_sync=distributed"):
        share_cpu_parameters([layer])
    assert not in_shared_memory([("w", layer.weight), ("b", layer.bias)])


def test_shared_parameter_views_go_as_a_handle_each_and_only_the_rest_is_packed():
    layer = torch.nn.Linear(8, 6)
    share_cpu_parameters([layer])
    w = layer.weight.detach().view(2, 3, 8)
    bucket = [("q", w[:, :1]), ("kv", w[:, 1:]), ("b", layer.bias.detach())]  # strided views, as a QKV split
    client = RecordingClient()
    transport = HandleTransport([client])
    try:
        transport.send(bucket, 1)
        assert client.formats == [None] and transport.packed_bytes == 0
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(client.received[0], bucket))
        mixed = bucket + [("x", torch.ones(3))]  # one tensor of its own memory: only that one is packed
        transport.send(mixed, 1)
        assert client.formats == [None, None] and transport.packed_bytes == 3 * 4
        assert [n for n, _ in client.received[1]] == ["q", "kv", "b", "x"]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(client.received[1], mixed))
        transport.send([("y", torch.zeros(5))], 1)  # nothing shared: one flat buffer
        assert client.formats == [None, None, FLATTENED] and transport.packed_bytes == 3 * 4 + 5 * 4
    finally:
        transport.close()


SENDER = """
import subprocess, sys, torch
from megatron_sgpo.weights.transports import HandleTransport, share_cpu_parameters

class OtherProcess:
    url, tp_size = "http://engine", 1
    def request(self, method, path, body, retry=True):
        decode = ("import sys; from megatron_sgpo.weights.tensor_handles import deserialize_named_tensors as d; "
                  f"n = d(sys.stdin.read(), {body['load_format']!r}); "
                  "print(sum(float(t.double().sum()) for _, t in n), "
                  "'+'.join(sorted({t.untyped_storage()._share_filename_cpu_()[1].decode() for _, t in n}))); "
                  "del n")  # an engine lets go of a bucket once it has loaded it
        out = subprocess.run([sys.executable, "-c", decode], input=body["serialized_named_tensors"][0],
                             capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip().splitlines()[-1])

t = HandleTransport([OtherProcess(), OtherProcess()])  # two engines map every bucket
if sys.argv[1] == "staging":
    for i in (1, 2, 3):
        t.send([("w", torch.full((100,), float(i))), ("b", torch.ones(3))], 1)
else:  # the parameters themselves, updated in place between syncs as an optimizer does
    layer = torch.nn.Linear(10, 10)
    share_cpu_parameters([layer])
    for i in (1, 2, 3):
        with torch.no_grad():
            layer.weight.fill_(i)
            layer.bias.fill_(0.25)
        t.send([("w", layer.weight.detach()), ("b", layer.bias.detach()[:4])], 1)
    assert t.packed_bytes == 0
t.close()
"""


def _two_engine_processes(source: str) -> tuple[list[str], list[str]]:
    """Sums and shared-memory file names the two engine processes read, three buckets each."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", SENDER, source], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=root))
    sums, files = zip(*(line.split() for line in out.stdout.splitlines())) if out.stdout else ((), ())
    assert out.returncode == 0 and len(sums) == 6, out.stdout + out.stderr[-2000:]
    return sorted(sums), list(files)


def test_two_engine_processes_open_every_bucket_of_the_reused_buffers():
    """Each engine that maps a bucket takes over one reference to its shared-memory file; with one pickling shared
    by two engines the file was unlinked after the first bucket, and the next bucket in the same (reused) buffer
    could no longer be opened (seen with two real SGLang servers)."""
    sums, files = _two_engine_processes("staging")
    assert sums == ["103.0", "103.0", "203.0", "203.0", "303.0", "303.0"]
    assert len(set(files)) == 2, files  # the two staging buffers themselves, not a fresh copy per bucket


def test_two_engine_processes_read_the_updated_parameters_at_every_sync():
    """The engines map the trainer's own parameter memory: each sync they read what the optimizer wrote in place,
    through the same files (one per parameter), and every engine can open them at every sync."""
    sums, files = _two_engine_processes("parameters")
    assert sums == ["101.0", "101.0", "201.0", "201.0", "301.0", "301.0"]
    assert len(set(files)) == 1 and len(files[0].split("+")) == 2, files
