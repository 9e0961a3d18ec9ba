"""Failure modes: crashed server, slow server, malformed answers, servers that never come up."""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from megatron_sgpo.rollout.engine import EngineError, SamplingParams
from megatron_sgpo.rollout.launcher import ServerLaunchError, SGLangLauncher
from megatron_sgpo.rollout.sglang import SGLangClient

GOOD = {"text": "", "output_ids": [7], "meta_info": {
    "id": "x", "finish_reason": {"type": "length", "length": 1}, "prompt_tokens": 1, "completion_tokens": 1,
    "weight_version": "0", "output_token_logprobs": [[-0.25, 7, None]]}}


class Stub:
    """A tiny HTTP server whose /generate answer is scripted per call: (delay_s, status, body)."""

    def __init__(self, script):
        self.script, self.calls, self.rids, self.aborted = list(script), 0, [], []
        stub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path == "/abort_request":
                    stub.aborted.append(body.get("rid"))
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                stub.calls += 1
                stub.rids.append(body.get("rid"))
                delay, status, body = stub.script[min(stub.calls, len(stub.script)) - 1]
                time.sleep(delay)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub_factory():
    made = []
    yield lambda script: made.append(Stub(script)) or made[-1]
    for s in made:
        s.close()


P = SamplingParams(max_new_tokens=1)


@pytest.mark.timeout(120)
def test_server_killed_mid_request_gives_url_and_log_tail(servers):
    victim = servers["victim"]
    client = SGLangClient(victim.url, launcher=victim, timeout_s=60, max_retries=3, backoff_s=0.1)
    box = {}

    def run():
        try:
            client.generate([[5, 6, 7]], [32], SamplingParams(max_new_tokens=1500))
        except EngineError as e:
            box["err"] = e

    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.5)
    killed_at = time.monotonic()
    victim.kill()
    t.join(20)
    assert not t.is_alive(), "client hung after the server died"
    assert time.monotonic() - killed_at < 15
    msg = str(box["err"])
    assert victim.url in msg and "died" in msg and "exited with code -9" in msg
    assert "sgpo serve: listening on" in msg  # the server's own last log lines
    client.close()


@pytest.mark.timeout(30)
def test_slow_server_times_out_then_retry_succeeds(stub_factory):
    stub = stub_factory([(1.0, 200, GOOD), (1.0, 200, GOOD), (0.0, 200, GOOD)])
    client = SGLangClient(stub.url, timeout_s=0.3, max_retries=3, backoff_s=0.01)
    out = client.generate([[1]], [1], P)
    assert out[0][0].token_ids == [7] and out[0][0].logprobs == [-0.25]
    assert stub.calls == 3 and client.attempts == 3
    rids = [rid for sent in stub.rids for rid in sent]  # one rid per sample: the list of a request's copies
    assert len(set(rids)) == 3 and stub.aborted == rids[:2]  # abandoned attempts were aborted


@pytest.mark.timeout(30)
def test_always_slow_server_fails_after_bounded_attempts(stub_factory):
    stub = stub_factory([(1.0, 200, GOOD)])
    client = SGLangClient(stub.url, timeout_s=0.2, max_retries=2, backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"POST .*/generate failed after 3 attempt\(s\).*Timeout"):
        client.generate([[1]], [1], P)
    assert time.monotonic() - t0 < 5 and client.attempts == 3


@pytest.mark.timeout(30)
def test_503_is_retried_but_400_is_not(stub_factory):
    stub = stub_factory([(0, 503, {"error": {"message": "starting"}}), (0, 200, GOOD)])
    client = SGLangClient(stub.url, max_retries=2, backoff_s=0.01)
    assert client.generate([[1]], [1], P)[0][0].token_ids == [7] and stub.calls == 2
    stub = stub_factory([(0, 400, {"error": {"message": "bad input_ids"}})])
    client = SGLangClient(stub.url, max_retries=3, backoff_s=0.01)
    with pytest.raises(EngineError, match="HTTP 400: bad input_ids"):
        client.generate([[1]], [1], P)
    assert stub.calls == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("body,needle", [
    (b"<html>oops", "not valid JSON"),
    ({"text": "", "output_ids": [7]}, "no 'meta_info'"),
    ({**GOOD, "meta_info": {**GOOD["meta_info"], "output_token_logprobs": None}}, "output_token_logprobs"),
    ([GOOD, GOOD], "expected 1 completion"),
])
def test_malformed_responses_are_named(stub_factory, body, needle):
    stub = stub_factory([(0, 200, body)])
    client = SGLangClient(stub.url, max_retries=0)
    with pytest.raises(EngineError, match=needle) as e:
        client.generate([[1]], [1], P)
    assert f"{stub.url}/generate" in str(e.value)


@pytest.mark.timeout(30)
def test_launcher_reports_early_death_with_output():
    L = SGLangLauncher([sys.executable, "-c", "print('boom: bad flag'); raise SystemExit(3)"], "http://127.0.0.1:9")
    with pytest.raises(ServerLaunchError, match=r"(?s)exited with code 3.*boom: bad flag"):
        L.start(timeout_s=20)


@pytest.mark.timeout(60)
def test_a_server_dies_with_the_process_that_launched_it():
    """SIGKILL of the launching process (a trainer, a test run) leaves no server behind, although the server runs
    in its own session (so that stop() can kill its whole process group)."""
    import os
    import signal
    import subprocess

    import psutil

    script = ("import sys, time; from megatron_sgpo.rollout.launcher import SGLangLauncher; "
              "L = SGLangLauncher([sys.executable, '-c', 'import time; time.sleep(120)'], 'http://127.0.0.1:9'); "
              "L.start(wait=False); print(L.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server = psutil.Process(int(parent.stdout.readline()))
    assert server.is_running() and server.ppid() == parent.pid
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    server.wait(timeout=10)  # raises psutil.TimeoutExpired if the server outlives its launcher
    assert not psutil.pid_exists(server.pid) or server.status() == psutil.STATUS_ZOMBIE


@pytest.mark.timeout(30)
def test_launcher_times_out_and_stops_the_process():
    L = SGLangLauncher([sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(60)"],
                       "http://127.0.0.1:9")
    t0 = time.monotonic()
    with pytest.raises(ServerLaunchError, match=r"(?s)not healthy after 2 s.*still loading"):
        L.start(timeout_s=2)
    assert time.monotonic() - t0 < 10
    L.stop(timeout_s=5)
    assert not L.alive()


def test_sglang_command_line_uses_its_flag_names():
    L = SGLangLauncher.sglang("/m", 30001, tp_size=2, mem_fraction_static=0.6, enable_memory_saver=True,
                              weight_version=0)
    assert L.argv[1:3] == ["-m", "sglang.launch_server"]
    s = " ".join(L.argv)
    for flag in ["--model-path /m", "--tp-size 2", "--mem-fraction-static 0.6", "--enable-memory-saver",
                 "--port 30001", "--host 127.0.0.1", "--weight-version 0"]:
        assert flag in s
    assert L.url == "http://127.0.0.1:30001"


def test_sglang_defaults_are_the_flags_the_client_relies_on():
    """Seeds need --enable-deterministic-inference, release needs --enable-memory-saver, integer versions need
    --weight-version: on by default. The CPU preset leaves out the first two (SGLang refuses them there)."""
    gpu = SGLangLauncher.sglang("/m", 30001).argv
    assert {"--enable-deterministic-inference", "--enable-memory-saver"} <= set(gpu)
    assert gpu[gpu.index("--weight-version") + 1] == "0"
    cpu = SGLangLauncher.sglang("/m", 30001, device="cpu")
    assert not {"--enable-deterministic-inference", "--enable-memory-saver"} & set(cpu.argv)
    assert cpu.argv[cpu.argv.index("--attention-backend") + 1] == "torch_native"
    assert cpu.env["SGLANG_USE_CPU_ENGINE"] == "1"
