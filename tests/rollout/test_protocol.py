"""Wire format: SGLang sampling params, /generate response parsing, tensor (de)serialisation."""
import base64
import pickle

import pytest
import torch

from megatron_sgpo.rollout.engine import Completion, EngineError, SamplingParams
from megatron_sgpo.rollout.protocol import (
    completion_to_json,
    from_sglang_sampling,
    normalize_generate_request,
    parse_completion,
    to_sglang_sampling,
)
from megatron_sgpo.weights.tensor_handles import (
    FLATTENED,
    deserialize_named_tensors,
    flatten_bucket,
    serialize_handles,
    serialize_named_tensors,
)


def test_sampling_params_round_trip_with_sglang_names():
    p = SamplingParams(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=9, stop=["x"], stop_token_ids=[2], seed=4)
    d = to_sglang_sampling(p, 3)
    assert d["sampling_seed"] == 4 and d["n"] == 3 and d["stop"] == ["x"] and d["max_new_tokens"] == 9
    assert from_sglang_sampling(d) == (p, 3)
    assert from_sglang_sampling({"top_k": 1 << 30})[0].top_k == -1  # SGLang's TOP_K_ALL


def test_unsupported_sampling_key_is_named():
    assert from_sglang_sampling({"min_p": 0.0})[0] == SamplingParams()  # SGLang default: ignored
    with pytest.raises(ValueError, match="frequency_penalty"):
        from_sglang_sampling({"frequency_penalty": 0.5})


def test_request_normalisation_rules():
    r = normalize_generate_request({"input_ids": [1, 2], "rid": "a", "sampling_params": {"n": 2}})
    assert r["single"] and r["prompts"] == [[1, 2]] and r["rids"] == ["a"] and r["params"][0][1] == 2
    with pytest.raises(ValueError, match="same 'n'"):
        normalize_generate_request({"input_ids": [[1], [2]], "sampling_params": [{"n": 1}, {"n": 2}]})
    with pytest.raises(ValueError, match="input_ids"):
        normalize_generate_request({"input_ids": [[]]})


def test_response_shape_and_parse_round_trip():
    c = Completion(0, [7, 8], [-0.5, -1.5], "stop", "w7 w8", weight_version=3, extra={"matched": 8})
    j = completion_to_json(c, "rid1", prompt_tokens=4, return_logprob=True)
    assert j["meta_info"]["finish_reason"] == {"type": "stop", "matched": 8}
    assert j["meta_info"]["output_token_logprobs"] == [[-0.5, 7, None], [-1.5, 8, None]]
    assert (j["meta_info"]["prompt_tokens"], j["meta_info"]["completion_tokens"]) == (4, 2)
    back = parse_completion(j, 0, "POST /generate")
    assert (back.token_ids, back.logprobs, back.finish_reason, back.weight_version) == ([7, 8], [-0.5, -1.5], "stop", 3)


@pytest.mark.parametrize("mutate,needle", [
    (lambda j: j.pop("meta_info"), "meta_info"),
    (lambda j: j["meta_info"].pop("output_token_logprobs"), "output_token_logprobs"),
    (lambda j: j["meta_info"].update(finish_reason="stop"), "finish_reason"),
    (lambda j: j.update(output_ids=[1, 2]), "disagree"),
])
def test_malformed_completion_is_named(mutate, needle):
    j = completion_to_json(Completion(0, [7], [-0.1], "length"), "r", 1, True)
    mutate(j)
    with pytest.raises(EngineError, match=needle):
        parse_completion(j, 0, "POST http://x/generate")


def test_named_tensors_round_trip_through_shared_memory():
    tensors = [("a.weight", torch.randn(3, 4)), ("b", torch.arange(5, dtype=torch.bfloat16))]
    back = deserialize_named_tensors(serialize_named_tensors(tensors))
    assert [n for n, _ in back] == ["a.weight", "b"]
    assert all(torch.equal(x, y) and x.dtype == y.dtype for (_, x), (_, y) in zip(tensors, back))


def test_deserialiser_rejects_arbitrary_pickles():
    evil = base64.b64encode(pickle.dumps(print)).decode()
    with pytest.raises(ValueError, match="builtins.print"):
        deserialize_named_tensors(evil)
    with pytest.raises(ValueError, match="list of \\(name, tensor\\)"):
        deserialize_named_tensors(base64.b64encode(pickle.dumps([1, 2])).decode())


def test_a_flattened_bucket_round_trips_with_aligned_views():
    """SGLang's flattened_bucket payload: one buffer, each tensor at a 64-byte aligned offset, dtypes mixed."""
    tensors = [("a", torch.arange(3, dtype=torch.bfloat16)), ("b.weight", torch.randn(2, 5)),
               ("c", torch.tensor([7], dtype=torch.int64))]
    flat = flatten_bucket(tensors)
    assert [m.start_idx for m in flat["metadata"]] == [0, 64, 128]
    assert [m.numel for m in flat["metadata"]] == [6, 40, 8]
    back = deserialize_named_tensors(serialize_handles(flat), FLATTENED)
    assert [n for n, _ in back] == ["a", "b.weight", "c"]
    assert all(torch.equal(x, y) and x.dtype == y.dtype for (_, x), (_, y) in zip(tensors, back))


def test_a_flattened_bucket_whose_metadata_overruns_its_buffer_is_refused():
    flat = flatten_bucket([("a", torch.zeros(4))])
    flat["metadata"][0].end_idx += 4
    with pytest.raises(ValueError, match="metadata for 'a'.*buffer of 16 bytes"):
        deserialize_named_tensors(serialize_handles(flat), FLATTENED)
    with pytest.raises(ValueError, match="flattened_tensor.*metadata"):
        deserialize_named_tensors(serialize_handles([("a", torch.zeros(4))]), FLATTENED)
