"""`sgpo serve`: the LocalEngine behind SGLang's HTTP API (endpoints and shapes of sglang 0.5.23).

The default test suite's SGLang: starts in seconds, needs no second venv, and takes the fault tests (a
server killed mid-request, bad requests) that the real server's tier does not. Where the client depends on
SGLang's behaviour it behaves the same (checked against SGLang 0.5.23 by tests/engines): tensor and
distributed weight updates only inside /begin_weight_update ... /end_weight_update, `flush_cache` refused
while requests run, seeds ignored unless started with --enable-deterministic-inference, release freeing
nothing unless started with --enable-memory-saver, and the samples of an `n > 1` request under fresh ids
(an abort by the caller's id misses them). One difference: the prompts of one request are generated
together, so aborting one of its ids aborts them all.
Standard library HTTP (ThreadingHTTPServer); generation is serialised by the engine's lock,
so concurrency here only means that aborts, health checks and info calls are never blocked.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

import torch

from megatron_sgpo.weights.broadcast_group import destroy_weight_group, init_weight_group, torch_dtype
from megatron_sgpo.weights.tensor_handles import FLATTENED, deserialize_named_tensors

from .engine import EngineError
from .local import LocalEngine
from .protocol import completion_to_json, normalize_generate_request

MAPPED_REQUESTS = 8  # CPU payloads kept mapped: senders reuse their memory, and mapped memory needs no new mapping


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class SGLangCompatApp:
    """Route table and handlers; independent of the HTTP server so it can be called directly."""

    def __init__(self, engine: LocalEngine, memory_saver: bool = False, deterministic: bool = False):
        self.engine = engine
        self.memory_saver, self.deterministic = memory_saver, deterministic
        self.inflight: dict[str, threading.Event] = {}
        self.inflight_lock = threading.Lock()
        self.groups: dict[str, Any] = {}
        self.session_open = False
        self.mapped_requests: deque = deque(maxlen=MAPPED_REQUESTS)
        get_post = ("GET", "POST")
        self.routes: dict[tuple[str, str], Callable[[dict], Any]] = {}
        for methods, path, fn in [
            (("POST", "PUT"), "/generate", self.generate),
            (("GET",), "/health", self.health), (("GET",), "/health_generate", self.health),
            (("GET",), "/get_model_info", self.model_info), (("GET",), "/model_info", self.model_info),
            (("GET",), "/get_weight_version", self.get_weight_version),
            (("GET",), "/server_info", self.server_info), (("GET",), "/get_server_info", self.server_info),
            (get_post, "/flush_cache", self.flush_cache),
            (("POST",), "/begin_weight_update", self.begin_session),
            (("POST",), "/end_weight_update", self.end_session),
            (("POST",), "/abort_request", self.abort_request),
            (get_post, "/release_memory_occupation", self.release),
            (get_post, "/resume_memory_occupation", self.resume),
            (("POST",), "/update_weights_from_tensor", self.update_from_tensor),
            (("POST",), "/init_weights_update_group", self.init_group),
            (("POST",), "/destroy_weights_update_group", self.destroy_group),
            (("POST",), "/update_weights_from_distributed", self.update_from_distributed),
            (("POST",), "/update_weights_from_disk", self.update_from_disk),
            (("POST",), "/update_weight_version", self.update_weight_version),
        ]:
            for m in methods:
                self.routes[(m, path)] = fn

    # --------------------------------------------------------------- generation
    def generate(self, body: dict) -> Any:
        req = normalize_generate_request(body, self.engine.tokenizer)
        if req["stream"]:
            raise HTTPError(400, "stream=true is not supported by sgpo serve")
        cancel = threading.Event()
        prompts, params = req["prompts"], req["params"]
        if not self.deterministic:  # as SGLang: sampling_seed is ignored without deterministic inference
            params = [(dataclasses.replace(sp, seed=None), n) for sp, n in params]
        n = params[0][1]
        # as SGLang: the samples of an n > 1 request run under fresh ids, so the caller's id cannot abort them
        ids = req["rids"] if n == 1 else [uuid.uuid4().hex for _ in range(len(prompts) * n)]
        with self.inflight_lock:
            for rid in ids:
                self.inflight[rid] = cancel
        try:
            if all(p == params[0] for p in params):
                groups = self.engine.generate(prompts, [n for _, n in params], params[0][0], cancel=cancel)
            else:
                groups = [self.engine.generate([p], [n], sp, cancel=cancel)[0] for p, (sp, n) in zip(prompts, params)]
        finally:
            with self.inflight_lock:
                for rid in ids:
                    self.inflight.pop(rid, None)
        out = []
        sample_ids = iter(ids if n > 1 else req["rids"])
        for prompt, group in zip(prompts, groups):
            for c in group:
                out.append(completion_to_json(c, next(sample_ids), len(prompt), req["return_logprob"]))
        return out[0] if req["single"] and len(out) == 1 else out

    def busy(self) -> bool:
        with self.inflight_lock:
            return bool(self.inflight)

    def flush_cache(self, body: dict) -> str:
        """Refused while requests run, as SGLang; `timeout` (seconds, a query parameter) waits for them."""
        deadline = time.monotonic() + float(body.get("timeout") or 0)
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.busy():
            raise HTTPError(400, "Flush cache failed.\n")
        return "Cache flushed.\n"

    def abort_request(self, body: dict) -> None:
        if body.get("abort_all"):
            self.engine.abort()
            return None
        rid = body.get("rid")
        if not isinstance(rid, str):
            raise HTTPError(400, "abort_request needs 'rid' (string) or 'abort_all': true")
        with self.inflight_lock:
            ev = self.inflight.get(rid)
        if ev is not None:
            ev.set()
        return None

    # --------------------------------------------------------------- info / lifecycle
    def health(self, body: dict) -> str:
        return ""

    def model_info(self, body: dict) -> dict:
        cfg = self.engine.model.config
        return {"model_path": self.engine.model_dir, "tokenizer_path": self.engine.model_dir,
                "is_generation": True, "weight_version": str(self.engine.weight_version),
                "model_type": getattr(cfg, "model_type", None), "architectures": getattr(cfg, "architectures", None)}

    def get_weight_version(self, body: dict) -> dict:
        return {"weight_version": str(self.engine.weight_version)}

    def server_info(self, body: dict) -> dict:
        """The server arguments the client reads (SGLang returns all of them)."""
        return {"model_path": self.engine.model_dir, "weight_version": str(self.engine.weight_version),
                "enable_memory_saver": self.memory_saver, "enable_deterministic_inference": self.deterministic,
                "device": self.engine.device.type}

    def release(self, body: dict) -> None:
        if self.memory_saver:  # as SGLang: without the memory saver, release frees nothing
            self.engine.release_memory()

    def resume(self, body: dict) -> None:
        if self.memory_saver:
            self.engine.resume_memory()

    # --------------------------------------------------------------- weights
    def _version(self, body: dict, key: str = "weight_version") -> int:
        v = body.get(key)
        if v is None:
            return self.engine.weight_version
        try:
            return int(v)
        except (TypeError, ValueError):
            raise HTTPError(400, f"{key} must be an integer (as a string) for sgpo serve, got {v!r}")

    @staticmethod
    def _ok(message: str) -> dict:
        return {"success": True, "message": message}

    def begin_session(self, body: dict) -> dict:
        if self.session_open:
            raise HTTPError(400, "a weight-update session is already open; call end_weight_update() first")
        self.session_open = True
        return self._ok("Success")

    def end_session(self, body: dict) -> dict:
        if not self.session_open:
            raise HTTPError(400, "no weight-update session is open; call begin_weight_update() first")
        self.session_open = False
        return self._ok("Success")

    def _in_session(self, what: str) -> None:
        if not self.session_open:
            raise HTTPError(400, f"{what} must run between begin_weight_update() and end_weight_update()")

    def _loaded(self, body: dict, message: str) -> dict:
        """SGLang's flush after a load: with flush_cache (its default) and requests running, the call fails."""
        if body.get("flush_cache", True) and self.busy():
            raise HTTPError(400, "Weights were updated, but the cache was not flushed because requests are still "
                                 "running or queued. Retract or finish them, then call /flush_cache.")
        return self._ok(message)

    def update_from_tensor(self, body: dict) -> dict:
        self._in_session("update_weights_from_tensor")
        payloads = body.get("serialized_named_tensors")
        if not isinstance(payloads, list) or not payloads:
            raise HTTPError(400, "serialized_named_tensors must be a non-empty list (one entry per TP rank)")
        load_format = body.get("load_format")
        if load_format not in (None, "direct", FLATTENED):
            raise HTTPError(400, f"load_format {load_format!r} is not supported by sgpo serve")
        start = time.perf_counter()
        named = deserialize_named_tensors(payloads[0], load_format)  # this server is a single TP rank
        if named and named[0][1].device.type == "cpu":  # not CUDA IPC: that would pin the sender's memory
            self.mapped_requests.append([t for _, t in named])
        mapped = time.perf_counter()
        version = self._version(body)
        self.engine.update_weights(named, version)
        return self._loaded(body, f"updated {len(named)} tensors (mapped in {1e3 * (mapped - start):.1f} ms, loaded "
                                  f"in {1e3 * (time.perf_counter() - mapped):.1f} ms); weight_version={version}")

    def init_group(self, body: dict) -> dict:
        try:
            addr, port = str(body["master_address"]), int(body["master_port"])
            offset, world = int(body["rank_offset"]), int(body["world_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise HTTPError(400, f"init_weights_update_group needs master_address, master_port, rank_offset, "
                                 f"world_size: {e!r}")
        name = body.get("group_name", "weight_update_group")
        backend = body.get("backend", "nccl")
        if backend == "nccl" and not torch.cuda.is_available():
            backend = "gloo"  # the CPU stand-in for NCCL
        self.groups[name] = init_weight_group(backend, addr, port, world, offset, name)
        return self._ok(f"joined group {name!r} as rank {offset} of {world} ({backend})")

    def destroy_group(self, body: dict) -> dict:
        name = body.get("group_name", "weight_update_group")
        pg = self.groups.pop(name, None)
        if pg is None:
            raise HTTPError(400, f"no weight update group named {name!r}")
        destroy_weight_group(pg)
        return self._ok(f"destroyed {name!r}")

    def update_from_distributed(self, body: dict) -> dict:
        self._in_session("update_weights_from_distributed")
        name = body.get("group_name", "weight_update_group")
        pg = self.groups.get(name)
        if pg is None:
            raise HTTPError(400, f"no weight update group named {name!r}; call /init_weights_update_group first")
        names, dtypes, shapes = body.get("names"), body.get("dtypes"), body.get("shapes")
        if not (isinstance(names, list) and isinstance(dtypes, list) and isinstance(shapes, list)
                and len(names) == len(dtypes) == len(shapes)):
            raise HTTPError(400, "names, dtypes and shapes must be lists of equal length")
        device = self.engine.device if torch.distributed.get_backend(pg) == "nccl" else torch.device("cpu")
        received = []
        for n, dt, shape in zip(names, dtypes, shapes):
            t = torch.empty(shape, dtype=torch_dtype(dt), device=device)
            torch.distributed.broadcast(t, src=0, group=pg)  # same order as the trainer's broadcasts
            received.append((n, t))
        version = self._version(body)
        self.engine.update_weights(received, version)
        return self._loaded(body, f"received {len(received)} tensors; weight_version={version}")

    def update_from_disk(self, body: dict) -> dict:
        path = body.get("model_path")
        if not isinstance(path, str):
            raise HTTPError(400, "update_weights_from_disk needs 'model_path'")
        self.engine.update_weights_from_disk(path, self._version(body))
        return {"success": True, "message": f"loaded {path}", "num_paused_requests": 0}

    def update_weight_version(self, body: dict) -> dict:
        if body.get("abort_all_requests", True):
            self.engine.abort()
        version = self._version(body, "new_version")
        self.engine.set_weight_version(version)
        return {"success": True, "message": f"Weight version updated to {version}", "new_version": str(version)}


def _make_handler(app: SGLangCompatApp):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body leave in two writes; with Nagle on, the body waits for the client's delayed ACK of
        # the headers: a fixed ~40 ms on every request of a kept-alive connection (measured: docs/benchmarks.md)
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):  # one line per request on stderr, kept by the launcher
            sys.stderr.write(f"[sgpo serve] {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

        def _reply(self, status: int, payload: Any) -> None:
            if isinstance(payload, str):
                data, ctype = payload.encode(), "text/plain; charset=utf-8"
            else:
                data, ctype = json.dumps(payload).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            path, _, query = self.path.partition("?")
            where = f"{self.command} {path}"
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fn = app.routes.get((self.command, path))
                if fn is None:
                    known = any(p == path for _, p in app.routes)
                    reason = "method not allowed" if known else "no such endpoint"
                    raise HTTPError(405 if known else 404, f"{where}: {reason}")
                try:
                    body = json.loads(raw) if raw.strip() else {}
                except json.JSONDecodeError as e:
                    raise HTTPError(400, f"{where}: malformed JSON body: {e}")
                if body is None:
                    body = {}
                if not isinstance(body, dict):
                    raise HTTPError(400, f"{where}: the JSON body must be an object, got {type(body).__name__}")
                body = {**{k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}, **body}  # query parameters
                result = fn(body)
                self._reply(200, result)
            except HTTPError as e:
                self._reply(e.status, {"error": {"message": str(e), "code": e.status}})
            except (ValueError, EngineError, KeyError) as e:
                self._reply(400, {"error": {"message": f"{where}: {e}", "code": 400}})
            except Exception as e:  # keep serving; the traceback goes to the log
                traceback.print_exc()
                self._reply(500, {"error": {"message": f"{where}: {type(e).__name__}: {e}", "code": 500}})

        do_GET = do_POST = do_PUT = _handle

    return Handler


def build_server(engine: LocalEngine, host: str, port: int, memory_saver: bool = False,
                 deterministic: bool = False) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _make_handler(SGLangCompatApp(engine, memory_saver, deterministic)))
    server.daemon_threads = True
    return server


def serve_main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `sgpo serve --model DIR --host H --port N`."""
    ap = argparse.ArgumentParser(prog="sgpo serve", description="Serve an HF model with SGLang's HTTP API.")
    ap.add_argument("--model", "--model-path", dest="model", required=True, help="HF model folder")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--weight-version", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--load-threads", type=int, default=0,
                    help="threads copying a weight update into the model (default: every core on CPU, 1 on CUDA)")
    ap.add_argument("--enable-memory-saver", action="store_true",
                    help="release_memory_occupation really releases (as SGLang's flag; otherwise it is a no-op)")
    ap.add_argument("--enable-deterministic-inference", action="store_true",
                    help="honour sampling_seed (as SGLang's flag; otherwise seeds are ignored)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = LocalEngine(args.model, device=args.device, max_batch_size=args.max_batch_size,
                         dtype=getattr(torch, args.dtype) if args.dtype else None, load_threads=args.load_threads)
    engine.set_weight_version(args.weight_version)
    server = build_server(engine, args.host, args.port, args.enable_memory_saver,
                          args.enable_deterministic_inference)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"sgpo serve: listening on http://{args.host}:{server.server_address[1]} model={args.model}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
