"""The trainable policy: megatron model chunks wrapped in megatron DDP, with megatron's optimizer.

Holds what one rank owns of the model and exposes the two passes RL needs: log-probs (forward only)
and an update over a step's micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from megatron_sgpo.choices import check_choices
from megatron_sgpo.model.build import ModelOptions, build_model
from megatron_sgpo.model.hf_config import load_hf_config
from megatron_sgpo.platform.dist import device
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.train.step import LossFn, MicroBatch, forward_backward, forward_logprobs


class NonFiniteLossError(RuntimeError):
    """Raised before the optimizer step when the loss is NaN/inf; the weights stay as they were."""


@dataclass(frozen=True)
class OptimConfig:
    """Adam and its learning-rate schedule (megatron's OptimizerParamScheduler, stepped once per optimizer step).

    ``lr_warmup_steps`` ramps the rate linearly from 0 to ``lr``; then it stays (``constant``) or decays to
    ``min_lr`` at ``lr_decay_steps`` (0: the run's last optimizer step) linearly or on a cosine.
    """

    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    distributed_optimizer: bool = False
    lr_warmup_steps: int = 0
    lr_decay_style: Literal["constant", "linear", "cosine"] = "constant"
    lr_decay_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self):
        check_choices(self)
        if self.lr <= 0:
            raise ValueError(f"optimizer lr must be > 0, got {self.lr}")
        if self.clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0, got {self.clip_grad}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.lr_warmup_steps < 0 or self.lr_decay_steps < 0:
            raise ValueError("lr_warmup_steps and lr_decay_steps must be >= 0")
        if self.lr_decay_steps and self.lr_warmup_steps >= self.lr_decay_steps:
            raise ValueError(f"lr_warmup_steps={self.lr_warmup_steps} must be < lr_decay_steps={self.lr_decay_steps}")

    def scheduler(self, optimizer, total_steps: int):
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        decay_steps = self.lr_decay_steps or max(total_steps, self.lr_warmup_steps + 1)
        return OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=self.lr, min_lr=self.min_lr,
                                       lr_warmup_steps=self.lr_warmup_steps, lr_decay_steps=decay_steps,
                                       lr_decay_style=self.lr_decay_style, start_wd=self.weight_decay,
                                       end_wd=self.weight_decay, wd_incr_steps=decay_steps, wd_incr_style="constant")


class Policy:
    """Model chunks + DDP + optimizer for one rank, built from an HF config."""

    def __init__(self, hf_config, layout: ParallelLayout, dp_size: int, options: ModelOptions = ModelOptions(),
                 optim: OptimConfig = OptimConfig(), total_steps: int = 1):
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        self.hf_config = load_hf_config(hf_config)
        self.layout, self.dp_size, self.options = layout, dp_size, options
        chunks = build_model(self.hf_config, layout, options)
        config = chunks[0].config
        config.finalize_model_grads_func = finalize_model_grads
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False,
            use_distributed_optimizer=optim.distributed_optimizer,
        )
        self.chunks = [
            DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk) for chunk in chunks
        ]
        dtype = options.torch_dtype()
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam", lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay, adam_beta1=optim.adam_beta1,
                adam_beta2=optim.adam_beta2, adam_eps=optim.adam_eps, clip_grad=optim.clip_grad,
                bf16=dtype == torch.bfloat16, params_dtype=dtype,
                use_distributed_optimizer=optim.distributed_optimizer,
            ),
            self.chunks,
        )
        self.scheduler = optim.scheduler(self.optimizer, total_steps)

    @property
    def vocab_size(self) -> int:
        return self.hf_config["vocab_size"]

    def modules(self) -> list:
        """The unwrapped GPTModel chunks."""
        return [c.module for c in self.chunks]

    def load_hf(self, hf) -> int:
        """Load HF tensors (a mapping name -> tensor, e.g. an HFCheckpoint); return bytes loaded.

        Collective. With an HFCheckpoint, tensors that no rank used are an error (config/checkpoint mismatch)."""
        from megatron.core import parallel_state

        from megatron_sgpo.model.load import ReadRecorder, check_all_used, load_hf_weights
        from megatron_sgpo.model.mapping import WeightMapping

        mapping = WeightMapping(self.hf_config, self.layout.tp, self.options.make_vocab_size_divisible_by)
        reader = ReadRecorder(hf)
        loaded = load_hf_weights(self.modules(), reader, mapping, parallel_state.get_tensor_model_parallel_rank())
        if hasattr(hf, "names"):  # a checkpoint folder: every tensor in it must have found a place
            check_all_used(hf, reader.read, mapping.tied)
        # megatron keeps fp32 main params inside the optimizer: refresh them from the new weights
        self.optimizer.reload_model_params()
        return loaded

    def logprobs(self, micro_batches: list[MicroBatch], temperature: float = 1.0, with_entropy: bool = False) -> list[dict]:
        """Forward only; on the last pipeline stage, per micro-batch ``{"logprobs": [b, s]}``."""
        return forward_logprobs(self.chunks, micro_batches, self.dp_size, self.vocab_size, temperature, with_entropy)

    def compute_gradients(self, micro_batches: list[MicroBatch], loss_fn: LossFn, temperature: float = 1.0,
                          with_entropy: bool = False) -> dict:
        """Forward/backward and the DP gradient reduction (grads land in ``param.main_grad``).

        Raises :class:`NonFiniteLossError` on every rank if any rank saw a NaN/inf loss or metric.
        """
        for chunk in self.chunks:
            chunk.train()
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        outputs = forward_backward(self.chunks, micro_batches, loss_fn, self.dp_size, self.vocab_size,
                                   temperature, with_entropy)
        metrics = _sum_metrics(outputs)
        finite = all(bool(torch.isfinite(v).all()) for v in metrics.values())  # empty off the last stage
        bad = torch.tensor([0.0 if finite else 1.0], device=device())
        dist.all_reduce(bad)
        if bad.item() > 0:
            raise NonFiniteLossError("loss or metrics are NaN/inf: the optimizer step was skipped")
        return metrics

    def train_step(self, micro_batches: list[MicroBatch], loss_fn: LossFn, temperature: float = 1.0,
                   with_entropy: bool = False) -> dict:
        """One optimizer step over the micro-batches; returns the summed metrics and the grad norm."""
        metrics = self.compute_gradients(micro_batches, loss_fn, temperature, with_entropy)
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            raise NonFiniteLossError("gradients are NaN/inf: the optimizer step was skipped")
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else 0.0
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.scheduler.step(1)
        return metrics


def _sum_metrics(outputs: list[dict]) -> dict:
    total: dict[str, torch.Tensor] = {}
    for out in outputs:
        for key, value in out.items():
            value = value.detach().float().sum()
            total[key] = total[key] + value if key in total else value
    return total
