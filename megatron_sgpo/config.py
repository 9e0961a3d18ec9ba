"""One config object per run: a dataclass tree read from YAML, with dotted command-line overrides.

Every section is validated when built (the section dataclasses check their own fields), and
unknown keys are errors that name the dotted key, so a typo fails before any compute.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field

import yaml

from megatron_sgpo.algo.grsp import GRSPConfig
from megatron_sgpo.algo.loss import LossConfig
from megatron_sgpo.algo.plan import PlanConfig
from megatron_sgpo.algo.posterior import OnlinePosteriorConfig
from megatron_sgpo.platform.dist import ParallelSizes
from megatron_sgpo.train.model import ModelOptions
from megatron_sgpo.train.policy import OptimConfig

MODES = ("sgpo", "grpo", "dapo")
SELECTIONS = ("none", "zero_variance", "cost_aware")


@dataclass(frozen=True)
class RunSection:
    output_dir: str = "runs/quickstart"
    seed: int = 0
    mode: str = "sgpo"  # sgpo | grpo (fixed n, no filter, shuffled) | dapo (grpo + dynamic sampling)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"run.mode must be one of {MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class ModelSection:
    hf_path: str = ""  # empty: the task's bundled policy
    parallel: ParallelSizes = field(default_factory=ParallelSizes)
    options: ModelOptions = field(default_factory=ModelOptions)


@dataclass(frozen=True)
class DataSection:
    task: str = "arith"  # registered task, gym:<name>, or "jsonl" with train_file
    train_file: str = ""
    eval_file: str = ""
    verifier: str = ""  # default: the task's verifier
    size: int = 200
    eval_size: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.task == "jsonl" and not self.train_file:
            raise ValueError("data.task=jsonl needs data.train_file")
        if self.size < 1 or self.eval_size < 0:
            raise ValueError(f"data.size must be >= 1 and data.eval_size >= 0, got {self.size}, {self.eval_size}")


@dataclass(frozen=True)
class ProfileSection:
    k: int = 8  # samples per prompt in the profiling pass
    path: str = ""  # reuse a saved profile; default <output_dir>/profile.json
    chunk_prompts: int = 32  # prompts per resumable chunk

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"profile.k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class RolloutSection:
    engine: str = "local"  # local (in-process) | sglang (url) | serve (our HTTP server, url)
    url: str = ""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 8
    stop: tuple = ()
    bucket_mb: int = 256
    tp_size: int = 1  # the SGLang server's --tp-size (weights are sent once per engine TP rank)
    weight_sync: str = "tensor"  # tensor (colocated, CUDA IPC) | distributed (NCCL broadcast from rank 0)
    release_memory: bool = True  # free the engine's GPU memory while the trainer runs (colocated)

    def __post_init__(self):
        if self.weight_sync not in ("tensor", "distributed"):
            raise ValueError(f"rollout.weight_sync must be tensor or distributed, got {self.weight_sync!r}")
        if self.engine not in ("local", "sglang", "serve"):
            raise ValueError(f"rollout.engine must be local, sglang or serve, got {self.engine!r}")
        if self.engine != "local" and not self.url:
            raise ValueError(f"rollout.engine={self.engine} needs rollout.url")


@dataclass(frozen=True)
class TrainSection:
    steps: int = 20
    prompts_per_step: int = 8
    epochs: int = 1
    grpo_n: int = 8  # group size of the grpo/dapo baselines
    max_tokens_per_micro_batch: int = 2048
    selection: str = "none"  # none | zero_variance | cost_aware
    cost_aware_draws: int = 0  # 0: as many draws as samples
    cost_aware_mix: float = 0.0
    eval_every: int = 5
    checkpoint_every: int = 5
    log_every: int = 1

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"train.selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.steps < 0:
            raise ValueError(f"train.steps must be >= 0, got {self.steps}")
        for name in ("prompts_per_step", "epochs", "grpo_n", "max_tokens_per_micro_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    profile: ProfileSection = field(default_factory=ProfileSection)
    plan: PlanConfig = field(default_factory=PlanConfig)
    online: OnlinePosteriorConfig = field(default_factory=OnlinePosteriorConfig)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    loss: LossConfig = field(default_factory=LossConfig)
    grsp: GRSPConfig = field(default_factory=lambda: GRSPConfig(coef=0.0))  # segment length penalty, off at 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)

    def __post_init__(self):
        if self.optim.distributed_optimizer and self.train.checkpoint_every:
            raise ValueError("optim.distributed_optimizer=true cannot be checkpointed by the RL loop yet (its sharded "
                             "Adam state is not restored exactly): set train.checkpoint_every=0, or "
                             "optim.distributed_optimizer=false")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data, path: str):
    """Instantiate dataclass ``cls`` from a dict, recursively, naming bad keys by their dotted path."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {path or '<root>'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = ", ".join(f"{path}.{k}" if path else k for k in unknown)
        raise ValueError(f"unknown config key(s): {where}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        dotted = f"{path}.{key}" if path else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, dotted)
        elif hint in (tuple, typing.Tuple) or typing.get_origin(hint) is tuple:
            kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        else:
            kwargs[key] = _coerce(hint, value, dotted)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid config section {path or '<root>'}: {exc}") from None


def _coerce(hint, value, dotted: str):
    """YAML reads ``3e-4`` as a string and ``1`` as an int: convert to the field's scalar type."""
    allowed = typing.get_args(hint) or (hint,)
    if value is None or type(value) in allowed or not isinstance(value, (str, int, float)):
        return value
    for kind in (int, float):
        if kind in allowed and not isinstance(value, bool):
            try:
                converted = kind(value)
            except ValueError:
                continue
            if kind is int and isinstance(value, float) and converted != value:
                continue
            return converted
    if str in allowed:
        return str(value)
    raise ValueError(f"config key {dotted}: {value!r} is not a {' or '.join(a.__name__ for a in allowed)}")


def _set_dotted(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted}: {key} is not a section")
    node[keys[-1]] = value


def load_config(path: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML (optional) and apply ``key.sub=value`` overrides (values parsed as YAML scalars)."""
    tree: dict = {}
    if path:
        if not os.path.exists(path):
            raise FileNotFoundError(f"config file {path} does not exist")
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return _build(RunConfig, tree, "")


def save_config(cfg: RunConfig, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(_plain(cfg.to_dict()), f, sort_keys=False)
    os.replace(tmp, path)


def _plain(value):
    """YAML-safe copy (tuples → lists, dtypes and callables → strings)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)
