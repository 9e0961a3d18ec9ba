"""A pure-torch stand-in for the one `sgl_kernel` function SGLang 0.5.23's CPU path calls.

`sgl_kernel` (SGLang's compiled kernels) has no CPU wheel on PyPI. With SGLANG_USE_CPU_ENGINE=1,
torch-native attention and float32, the server's hot path calls exactly one of its functions,
`assign_req_to_token_pool_cpu` (sglang/srt/mem_cache/allocation.py): it writes each request's new KV-cache
slots into its row of the request-to-token table. This file does the same with torch indexing, following
the Triton kernel `assign_req_to_token_pool` of the same module. Any other name raises at the call, naming
itself, so a new dependency shows up as a clear error rather than a wrong result.
Put this folder on PYTHONPATH of the server process only (tools/setup_sglang_cpu.sh, tests/engines).
"""
import torch

__version__ = "0.0.0+sgpo-cpu-stand-in"


def assign_req_to_token_pool_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                 start_offset: torch.Tensor, end_offset: torch.Tensor,
                                 out_cache_loc: torch.Tensor, pool_len: int) -> None:
    """req_to_token[req_pool_indices[i], start[i]:end[i]] = the i-th run of out_cache_loc."""
    del pool_len  # the row length, needed by the flat-pointer kernel only
    offset = 0
    for row, start, end in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist()):
        n = end - start
        req_to_token[row, start:end] = out_cache_loc[offset:offset + n].to(req_to_token.dtype)
        offset += n


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def missing(*args, **kwargs):
        raise NotImplementedError(f"sgl_kernel.{name} is not provided by the CPU stand-in "
                                  f"(tests/engines/sgl_kernel_cpu); only assign_req_to_token_pool_cpu is")
    missing.__name__ = name
    return missing
