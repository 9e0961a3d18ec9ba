"""SGLang's /generate request and response shapes (followed: sglang 0.5.23).

One module owns the wire format so that `sgpo serve` (which writes it) and `SGLangClient`
(which reads it, from our server or a real SGLang) cannot drift apart.
"""
from __future__ import annotations

import uuid
from typing import Any, Optional

from .engine import Completion, EngineError, SamplingParams

TOP_K_ALL = 1 << 30  # SGLang's "no top-k"; -1 is accepted too
SUPPORTED_SAMPLING_KEYS = {
    "temperature", "top_p", "top_k", "max_new_tokens", "stop", "stop_token_ids", "n", "sampling_seed",
}
# Keys SGLang accepts that we ignore when they hold their SGLang default value.
_DEFAULTS_OK = {"min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0,
                "min_new_tokens": 0, "ignore_eos": False, "skip_special_tokens": True,
                "spaces_between_special_tokens": True, "no_stop_trim": False}


def to_sglang_sampling(params: SamplingParams, n: int) -> dict:
    d: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p,
                         "top_k": params.top_k, "max_new_tokens": params.max_new_tokens, "n": int(n)}
    if params.stop:
        d["stop"] = list(params.stop)
    if params.stop_token_ids:
        d["stop_token_ids"] = list(params.stop_token_ids)
    if params.seed is not None:
        d["sampling_seed"] = int(params.seed)
    return d


def from_sglang_sampling(d: Optional[dict]) -> tuple[SamplingParams, int]:
    """SGLang sampling_params dict → (SamplingParams, n); ValueError names any unsupported key."""
    if d is not None and not isinstance(d, dict):
        raise ValueError("sampling_params must be an object")
    d = dict(d or {})
    for k, v in list(d.items()):
        if k in _DEFAULTS_OK and (v is None or v == _DEFAULTS_OK[k]):
            d.pop(k)
    unknown = sorted(set(d) - SUPPORTED_SAMPLING_KEYS)
    if unknown:
        raise ValueError(f"unsupported sampling_params {unknown}; supported: {sorted(SUPPORTED_SAMPLING_KEYS)}")
    top_k = d.get("top_k")
    top_k = -1 if top_k is None or top_k >= TOP_K_ALL or top_k <= 0 else int(top_k)
    stop = d.get("stop") or ()
    params = SamplingParams(
        temperature=1.0 if d.get("temperature") is None else float(d["temperature"]),
        top_p=1.0 if d.get("top_p") is None else float(d["top_p"]),
        top_k=top_k,
        max_new_tokens=128 if d.get("max_new_tokens") is None else int(d["max_new_tokens"]),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        stop_token_ids=tuple(int(t) for t in (d.get("stop_token_ids") or ())),
        seed=None if d.get("sampling_seed") is None else int(d["sampling_seed"]),
    )
    return params, int(d.get("n", 1) or 1)


def finish_reason_json(c: Completion) -> dict:
    """The dict SGLang's finish reasons serialise to (FINISH_MATCHED_*, FINISH_LENGTH, FINISH_ABORT)."""
    if c.finish_reason == "stop":
        return {"type": "stop", "matched": c.extra.get("matched")}
    if c.finish_reason == "length":
        return {"type": "length", "length": len(c.token_ids)}
    return {"type": "abort", "message": "Aborted", "status_code": None, "err_type": None}


def completion_to_json(c: Completion, rid: str, prompt_tokens: int, return_logprob: bool) -> dict:
    meta = {
        "id": rid,
        "finish_reason": finish_reason_json(c),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(c.token_ids),
        "cached_tokens": 0,
        "weight_version": str(c.weight_version),
    }
    if return_logprob:
        meta["output_token_logprobs"] = [[lp, t, None] for lp, t in zip(c.logprobs, c.token_ids)]
    return {"text": c.text, "output_ids": list(c.token_ids), "meta_info": meta}


def parse_completion(obj: Any, prompt_index: int, where: str) -> Completion:
    """A /generate result dict → Completion; EngineError says which field is missing or wrong."""
    if not isinstance(obj, dict):
        raise EngineError(f"{where}: expected a JSON object per completion, got {type(obj).__name__}")
    meta = obj.get("meta_info")
    if not isinstance(meta, dict):
        raise EngineError(f"{where}: response has no 'meta_info' object (keys: {sorted(obj)})")
    ids = obj.get("output_ids")
    lps = meta.get("output_token_logprobs")
    fr = meta.get("finish_reason")
    if not isinstance(ids, list):
        raise EngineError(f"{where}: response has no 'output_ids' list")
    if not isinstance(lps, list):
        raise EngineError(f"{where}: meta_info has no 'output_token_logprobs' list (was return_logprob sent?)")
    if not isinstance(fr, dict) or fr.get("type") not in ("stop", "length", "abort"):
        raise EngineError(f"{where}: meta_info.finish_reason must be an object with type stop|length|abort, got {fr!r}")
    try:
        tok_from_lp = [int(x[1]) for x in lps]
        logprobs = [float(x[0]) for x in lps]
    except (TypeError, ValueError, IndexError) as e:
        raise EngineError(f"{where}: output_token_logprobs entries must be [logprob, token_id, text]: {e}") from e
    if tok_from_lp != [int(t) for t in ids]:
        raise EngineError(f"{where}: output_token_logprobs token ids disagree with output_ids")
    version = meta.get("weight_version")
    try:
        version = int(version) if version is not None else None
    except ValueError:
        version = None  # a real SGLang started without --weight-version reports "default"
    return Completion(prompt_index, [int(t) for t in ids], logprobs, fr["type"], obj.get("text") or "",
                      weight_version=version, extra={"matched": fr.get("matched"), "rid": meta.get("id")})


def normalize_generate_request(body: Any, tokenizer=None) -> dict:
    """Validate a /generate body; returns prompts, per-prompt (params, n), rids, flags. ValueError on misuse."""
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    ids = body.get("input_ids")
    if ids is None and body.get("text") is not None:
        if tokenizer is None:
            raise ValueError("'text' needs a tokenizer in the model folder; send 'input_ids' instead")
        text = body["text"]
        ids = tokenizer(text)["input_ids"]
    if ids is None:
        raise ValueError("request needs 'input_ids' (a list of token ids or a list of such lists)")
    single = isinstance(ids, list) and (len(ids) == 0 or not isinstance(ids[0], list))
    prompts = [ids] if single else ids
    if not isinstance(prompts, list) or not prompts or not all(
        isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts
    ):
        raise ValueError("'input_ids' must be a non-empty list of ints or a list of non-empty lists of ints")
    sp = body.get("sampling_params")
    sps = sp if isinstance(sp, list) else [sp] * len(prompts)
    if len(sps) != len(prompts):
        raise ValueError(f"{len(sps)} sampling_params for {len(prompts)} prompts")
    parsed = [from_sglang_sampling(x) for x in sps]
    if len({n for _, n in parsed}) > 1:  # as SGLang: one n per request
        raise ValueError("all sampling_params of one request must share the same 'n'")
    rid = body.get("rid")
    if rid is None:
        rids = [uuid.uuid4().hex for _ in prompts]
    elif isinstance(rid, str):
        rids = [rid] if single else [f"{rid}_{i}" for i in range(len(prompts))]
    elif isinstance(rid, list) and len(rid) == len(prompts):
        rids = [str(r) for r in rid]
    else:
        raise ValueError("'rid' must be a string or one string per prompt")
    return {"prompts": prompts, "params": parsed, "rids": rids, "single": single,
            "return_logprob": bool(body.get("return_logprob")) if not isinstance(body.get("return_logprob"), list)
            else any(body["return_logprob"]),
            "stream": bool(body.get("stream"))}
