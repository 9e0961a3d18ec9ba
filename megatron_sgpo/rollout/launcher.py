"""Start an inference server process, wait for it to be healthy, and keep its last words.

One launcher serves `python -m sglang.launch_server` (GPU, or CPU with `device="cpu"`) and `sgpo serve`:
both speak the same HTTP API, and when either dies the error shows its last log lines
instead of a bare "connection refused".
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

import requests

from .engine import EngineError


class ServerLaunchError(EngineError):
    """The server process exited or never became healthy."""


def _die_with_launcher(parent_pid: int):
    """preexec_fn: the server gets SIGKILL when the process that launched it dies, however it dies (Linux
    PR_SET_PDEATHSIG), so a killed trainer or test run leaves no server behind; SGLang's own workers already
    die with its main process. The signal follows the launching *thread*: start servers from a long-lived one."""
    def arm() -> None:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # the launcher died before the signal was armed
            os._exit(1)

    return arm if sys.platform.startswith("linux") else None


class SGLangLauncher:
    """Owns one server process: argv, log ring buffer (+ optional log file), health wait, stop."""

    def __init__(self, argv: Sequence[str], url: str, log_path: Optional[str] = None,
                 env: Optional[dict] = None, ring_lines: int = 400):
        self.argv = list(argv)
        self.url = url.rstrip("/")
        self.log_path = log_path
        self.env = env
        self._ring: collections.deque[str] = collections.deque(maxlen=ring_lines)
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ command lines
    @classmethod
    def sglang(cls, model_path: str, port: int, host: str = "127.0.0.1", tp_size: int = 1,
               mem_fraction_static: Optional[float] = None, enable_memory_saver: bool = True,
               deterministic: bool = True, weight_version: Optional[int] = 0, device: Optional[str] = None,
               max_total_tokens: Optional[int] = None, extra_args: Sequence[str] = (),
               python: str = sys.executable, env: Optional[dict] = None, **kw) -> "SGLangLauncher":
        """`python -m sglang.launch_server` with sglang 0.5.23's flag names.

        The defaults are what the client relies on: --enable-memory-saver (else release frees nothing),
        --enable-deterministic-inference (else seeds are ignored) and --weight-version 0 (else versions read
        "default"). `device="cpu"` runs SGLang's CPU engine (SGLANG_USE_CPU_ENGINE=1) with torch-native attention
        in float32; neither memory saver (torch_memory_saver loads libcuda) nor deterministic inference (refused
        with torch-native attention) runs there, so they are left out and the client skips releases and
        refuses seeds."""
        argv = [python, "-m", "sglang.launch_server", "--model-path", model_path, "--tp-size", str(tp_size),
                "--host", host, "--port", str(port)]
        if device == "cpu":
            argv += ["--device", "cpu", "--attention-backend", "torch_native", "--dtype", "float32",
                     "--grammar-backend", "none", "--skip-server-warmup", "--disable-cuda-graph"]
            env = {"SGLANG_USE_CPU_ENGINE": "1", **(env or {})}
            enable_memory_saver = deterministic = False
        elif device is not None:
            argv += ["--device", device]
        if mem_fraction_static is not None:
            argv += ["--mem-fraction-static", str(mem_fraction_static)]
        if max_total_tokens is not None:
            argv += ["--max-total-tokens", str(max_total_tokens)]
        if enable_memory_saver:
            argv.append("--enable-memory-saver")
        if deterministic:
            argv.append("--enable-deterministic-inference")
        if weight_version is not None:
            argv += ["--weight-version", str(weight_version)]
        return cls(argv + list(extra_args), f"http://{host}:{port}", env=env, **kw)

    @classmethod
    def sgpo(cls, model_path: str, port: int, host: str = "127.0.0.1", enable_memory_saver: bool = True,
             deterministic: bool = True, extra_args: Sequence[str] = (), python: str = sys.executable,
             **kw) -> "SGLangLauncher":
        """Our own `sgpo serve` (the LocalEngine behind the same HTTP API), with SGLang's two flags."""
        argv = [python, "-m", "megatron_sgpo.rollout.server", "--model", model_path, "--host", host,
                "--port", str(port)]
        argv += ["--enable-memory-saver"] * enable_memory_saver + ["--enable-deterministic-inference"] * deterministic
        return cls(argv + list(extra_args), f"http://{host}:{port}", **kw)

    # ------------------------------------------------------------------ process
    def start(self, wait: bool = True, timeout_s: float = 300.0) -> "SGLangLauncher":
        if self._proc is not None:
            raise ServerLaunchError(f"server for {self.url} already started")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True, text=True, errors="replace", bufsize=1,
                                      preexec_fn=_die_with_launcher(os.getpid()))
        self._reader = threading.Thread(target=self._pump, daemon=True, name=f"log {self.url}")
        self._reader.start()
        if wait:
            self.wait_healthy(timeout_s)
        return self

    def _pump(self) -> None:
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        try:
            for line in self._proc.stdout:
                self._ring.append(line.rstrip("\n"))
                if log:
                    log.write(line)
                    log.flush()
        finally:
            if log:
                log.close()

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> Optional[int]:
        return self._proc.poll() if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def last_lines(self, n: int = 30) -> str:
        if self._reader is not None and not self.alive():
            self._reader.join(timeout=2.0)  # let the pipe drain once the process is gone
        return "\n".join(list(self._ring)[-n:])

    def describe(self, n: int = 30) -> str:
        """A sentence about the server's state plus its last log lines, for error messages."""
        state = "running" if self.alive() else f"exited with code {self.returncode}"
        where = f" (full log: {self.log_path})" if self.log_path else ""
        return f"server {self.url} (pid {self.pid}) {state}; last log lines{where}:\n{self.last_lines(n)}"

    def wait_healthy(self, timeout_s: float = 300.0, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerLaunchError(f"server process died before becoming healthy: {self.describe()}")
            try:
                if requests.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(poll_s)
        raise ServerLaunchError(f"server not healthy after {timeout_s:.0f} s: {self.describe()}")

    def kill(self) -> None:
        """SIGKILL the server's process group (tests use it to simulate a crash)."""
        if self.alive():
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after timeout_s; only the process group this launcher created."""
        if self._proc is None:
            return
        if self.alive():
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._reader is not None:
            self._reader.join(timeout=2.0)

    def __enter__(self):
        return self if self._proc else self.start()

    def __exit__(self, *exc):
        self.stop()
