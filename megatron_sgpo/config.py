"""One config object per run: a dataclass tree read from YAML, with dotted command-line overrides.

Every section validates its own fields (enumerations are ``Literal`` annotations, checked
generically), unknown keys are errors that name the dotted key, and :func:`load_config` refuses,
before any compute, every setting that cannot run: moved keys (naming their new place),
contradictions of the ``run.mode`` preset, settings that are not implemented yet, and plug-ins that
do not resolve. :func:`check_platform` adds what this machine cannot run (CUDA-only features) or
cannot find (files).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Literal

import yaml

from megatron_sgpo.algo.grsp import GRSPConfig
from megatron_sgpo.algo.loss import LossConfig
from megatron_sgpo.algo.mismatch import MismatchConfig
from megatron_sgpo.algo.plan import PlanConfig
from megatron_sgpo.algo.posterior import OnlinePosteriorConfig
from megatron_sgpo.algo.select import SelectionConfig
from megatron_sgpo.choices import check_choices, literal_values
from megatron_sgpo.model.build import ModelOptions
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.train.policy import OptimConfig


class ConfigError(ValueError):
    """A run config that cannot run; the message names the dotted key."""


@dataclass(frozen=True)
class RunSection:
    output_dir: str = "runs/quickstart"
    seed: int = 0
    mode: Literal["sgpo", "grpo", "dapo"] = "sgpo"  # a preset, see PRESETS


@dataclass(frozen=True)
class ModelSection:
    hf_path: str = ""  # empty: the task's bundled policy
    # start the policy from these megatron weights (tools/convert_hf_to_megatron.py output, or a run checkpoint's
    # dist/ folder); hf_path still gives the config, the tokenizer and the engine's first weights
    megatron_path: str = ""
    parallel: ParallelLayout = field(default_factory=ParallelLayout)
    options: ModelOptions = field(default_factory=ModelOptions)


@dataclass(frozen=True)
class DataSection:
    task: str = "arith"  # built-in task, gym:<name>, "jsonl" (with train_file), or package.module:TASK
    train_file: str = ""
    eval_file: str = ""
    verifier: str = ""  # built-in name or package.module:function; default: the task's verifier
    size: int = 200
    eval_size: int = 100
    seed: int = 0
    chat_template: Literal["auto", "always", "never"] = "auto"  # auto: when the tokenizer has one
    system_prompt: str = ""  # the system turn of the chat template

    def __post_init__(self):
        check_choices(self)
        if self.size < 1 or self.eval_size < 0:
            raise ValueError(f"data.size must be >= 1 and data.eval_size >= 0, got {self.size}, {self.eval_size}")


@dataclass(frozen=True)
class ProfileSection:
    k: int = 8  # samples per prompt in the profiling pass
    path: str = ""  # reuse a saved profile; default <output_dir>/profile.json
    chunk_prompts: int = 32  # prompts per resumable chunk
    # sequential profiling (algo/sequential_profile.py): rounds of round_size samples, up to k, until the
    # posterior's credible interval at `confidence` lies below unsolvable_below, above solved_above, or between
    sequential: bool = False
    round_size: int = 2
    confidence: float = 0.8
    unsolvable_below: float = 0.3
    solved_above: float = 0.7

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"profile.k must be >= 1, got {self.k}")
        self.rule()  # validates the sequential knobs

    def rule(self):
        from megatron_sgpo.algo.sequential_profile import SequentialRule

        return SequentialRule(self.round_size, self.confidence, self.unsolvable_below, self.solved_above)


@dataclass(frozen=True)
class RolloutSection:
    engine: str = "local"  # a rollout.engine.ENGINES name (local | sglang | serve | vllm) or package.module:factory
    url: str = ""
    urls: tuple = ()  # several servers (sglang | serve), dispatched per prompt by rollout.fleet.EngineFleet
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 8
    stop: tuple = ()
    bucket_mb: int = 256  # weight-sync bucket size
    tp_size: int = 1  # the SGLang server's --tp-size (weights are sent once per engine TP rank)
    # how trained weights reach engine servers: shared-memory / CUDA-IPC handles, a broadcast group, or files
    weight_sync: Literal["tensor", "distributed", "disk"] = "tensor"
    release_memory: bool = True  # free the engine's GPU memory while the trainer runs (colocated)
    # per-step sampling seeds (reproducible rollouts); false for an engine that cannot honour them (SGLang on a CPU)
    seeded: bool = True
    # partial rollouts (APRIL): keep partial_inflight × train.prompts_per_step groups in flight, train the first
    # prompts_per_step to complete, abort the rest and resume them at the next step (loop/april.py)
    partial: bool = False
    partial_inflight: float = 1.5
    # asynchronous RL (loop/producer.py): step k+1's rollouts are made while step k trains, from weights at most
    # max_staleness versions older than the policy that trains on them (0: the synchronous loop, step for step)
    asynchronous: bool = False
    max_staleness: int = 1

    def __post_init__(self):
        check_choices(self)
        if self.bucket_mb < 1:
            raise ValueError(f"rollout.bucket_mb must be >= 1, got {self.bucket_mb}")
        if self.partial_inflight < 1:
            raise ValueError(f"rollout.partial_inflight must be >= 1, got {self.partial_inflight}")
        if self.max_staleness < 0:
            raise ValueError(f"rollout.max_staleness must be >= 0, got {self.max_staleness}")

    def sampling(self, seed: int, temperature: float | None = None):
        """The engine's SamplingParams for these settings (``temperature`` overrides, e.g. 0 for greedy)."""
        from megatron_sgpo.rollout.engine import SamplingParams

        return SamplingParams(temperature=self.temperature if temperature is None else temperature, top_p=self.top_p,
                              top_k=self.top_k, max_new_tokens=self.max_new_tokens, stop=tuple(self.stop),
                              seed=seed if self.seeded else None)


@dataclass(frozen=True)
class TrainSection:
    steps: int = 20
    prompts_per_step: int = 8
    epochs: int = 1  # passes over the plan's prompts
    mini_batches: int = 1  # optimizer steps per rollout batch (PPO mini-batches)
    ppo_epochs: int = 1  # passes over a rollout batch's mini-batches
    max_tokens_per_micro_batch: int = 2048
    eval_every: int = 5
    checkpoint_every: int = 5
    keep_checkpoints: int = 2  # the newest checkpoints kept on disk
    export_hf: bool = False  # write the trained policy as an HF folder (<output_dir>/hf) at the end

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"train.steps must be >= 0, got {self.steps}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        for name in ("prompts_per_step", "epochs", "mini_batches", "ppo_epochs", "max_tokens_per_micro_batch"):
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
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    loss: LossConfig = field(default_factory=LossConfig)
    mismatch: MismatchConfig = field(default_factory=MismatchConfig)
    grsp: GRSPConfig = field(default_factory=lambda: GRSPConfig(coef=0.0))  # segment length penalty, off at 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)

    def __post_init__(self):
        _check_run(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# run.mode is a preset: grpo and dapo train every prompt with plan.fixed_n rollouts (no profiling);
# dapo also drops groups whose rewards are all equal. A preset's keys may be left out or repeated,
# never contradicted.
PRESETS: dict[str, dict[str, object]] = {"sgpo": {}, "grpo": {}, "dapo": {"selection.zero_variance": True}}

MOVED = {
    "online.online": "online.enabled",
    "train.grpo_n": "plan.fixed_n",
    "train.selection": "selection.zero_variance and selection.cost_aware (booleans)",
    "train.cost_aware_draws": "selection.cost_aware_draws",
    "train.cost_aware_mix": "selection.cost_aware_mix",
    "model.options.fp8": "model.parallel.fp8",
    "model.options.fp8_recipe": "model.parallel.fp8_recipe",
}
REMOVED = {"train.log_every": "every step is logged (steps.jsonl and TensorBoard); the key never did anything"}


def _refuse(key: str, why: str) -> None:
    raise ConfigError(f"config key {key}: {why}")


def _check_run(cfg: RunConfig) -> None:
    """Rules across sections, and settings accepted by their section that a run cannot carry out yet."""
    from megatron_sgpo.plugins import PluginError
    from megatron_sgpo.rollout.engine import ENGINES
    from megatron_sgpo.tasks.registry import get_task
    from megatron_sgpo.tasks.verifiers import VERIFIERS

    if cfg.loss.kl_coef > 0 and cfg.loss.kl_in == "reward":
        if cfg.selection.cost_aware:
            _refuse("loss.kl_in", "'reward' recomputes group advantages after the reference pass, which the "
                                  "duplicated, importance-weighted draws of selection.cost_aware do not allow")
        if cfg.grsp.coef > 0 and cfg.grsp.target == "advantage":
            _refuse("loss.kl_in", "'reward' recomputes the advantages from rewards, which would drop a GRSP penalty "
                                  "applied to the advantage (grsp.target=advantage); use grsp.target=reward")
    if cfg.rollout.weight_sync != "tensor" and cfg.rollout.engine in ("local", "vllm"):
        _refuse("rollout.weight_sync", f"'{cfg.rollout.weight_sync}' sends weights to engine servers; "
                                       f"rollout.engine={cfg.rollout.engine} runs inside rank 0 and takes the tensors "
                                       f"directly (use 'tensor')")
    if cfg.rollout.partial and cfg.rollout.engine in ("local", "vllm"):
        _refuse("rollout.partial", f"partial rollouts abort requests by id on engine servers; rollout.engine="
                                   f"{cfg.rollout.engine} runs inside rank 0 (use sglang or serve)")
    if cfg.rollout.partial and cfg.selection.refill:
        _refuse("rollout.partial", "partial rollouts already keep the step full by starting more groups than it "
                                   "trains; selection.refill would top it up again (set one of them)")
    if cfg.mismatch.max_staleness is not None and not (cfg.rollout.partial or cfg.rollout.asynchronous):
        _refuse("mismatch.max_staleness", "only partial rollouts (rollout.partial) and asynchronous rollouts "
                                          "(rollout.asynchronous) train tokens of an older weight version; without "
                                          "them every token is current")
    if cfg.rollout.asynchronous:
        if cfg.rollout.engine in ("local", "vllm"):
            _refuse("rollout.asynchronous", f"rollout.engine={cfg.rollout.engine} runs inside rank 0, colocated with "
                                            f"the trainer: generation and training cannot overlap (use engine "
                                            f"servers: sglang or serve)")
        if cfg.rollout.release_memory:
            _refuse("rollout.asynchronous", "rollout.release_memory=true frees the engines' memory for training on "
                                            "the same GPUs (colocated), so generation cannot overlap training; set "
                                            "rollout.release_memory=false with engines on their own devices")
        if cfg.rollout.partial:
            _refuse("rollout.asynchronous", "partial rollouts (rollout.partial) already overlap steps by carrying "
                                            "unfinished groups; use one of the two")
    if cfg.model.parallel.cp > 1:
        _refuse("model.parallel.cp", "context parallelism is not implemented: micro-batches are not split over "
                                     "context-parallel ranks (and megatron's local attention on CPU cannot shard a "
                                     "sequence); use cp=1")
    if cfg.selection.refill and not cfg.selection.zero_variance:
        _refuse("selection.refill", "refill tops the step up with groups that the zero-variance filter keeps; set "
                                    "selection.zero_variance=true (run.mode=dapo does)")
    if cfg.plan.allocation == "budgeted" and cfg.run.mode != "sgpo":
        _refuse("plan.allocation", f"'budgeted' sizes groups from the profile's posteriors, which only run.mode=sgpo "
                                   f"makes (run.mode={cfg.run.mode})")
    if cfg.profile.sequential and cfg.run.mode != "sgpo":
        _refuse("profile.sequential", f"run.mode={cfg.run.mode} does not profile")
    if cfg.online.enabled and cfg.run.mode != "sgpo":
        _refuse("online.enabled", f"posteriors start from the profile, which only run.mode=sgpo makes "
                                  f"(run.mode={cfg.run.mode})")
    if cfg.data.system_prompt and cfg.data.chat_template == "never":
        _refuse("data.system_prompt", "a system prompt needs the chat template (data.chat_template=never)")
    if cfg.data.task == "jsonl" and not cfg.data.train_file:
        _refuse("data.train_file", "data.task=jsonl reads its prompts from data.train_file, which is empty")
    try:
        ENGINES.resolve(cfg.rollout.engine)
    except PluginError as exc:
        _refuse("rollout.engine", str(exc))
    if cfg.rollout.engine == "vllm" and (cfg.rollout.top_k != -1 or cfg.rollout.top_p < 1.0):
        _refuse("rollout.top_k" if cfg.rollout.top_k != -1 else "rollout.top_p",
                "vLLM renormalises over the top-k/top-p support its log-probs, which the loss needs untruncated "
                "(docs/rollout.md); use top_k=-1 and top_p=1 with rollout.engine=vllm")
    if cfg.rollout.url and cfg.rollout.urls:
        _refuse("rollout.urls", "set rollout.url (one server) or rollout.urls (several), not both")
    if cfg.rollout.urls and cfg.rollout.engine in ("local", "vllm"):
        _refuse("rollout.urls", f"rollout.engine={cfg.rollout.engine} runs in-process and talks to no server; "
                                f"use rollout.engine=sglang or serve")
    twice = sorted({u for u in cfg.rollout.urls if cfg.rollout.urls.count(u) > 1})
    if twice:
        _refuse("rollout.urls", f"lists {', '.join(twice)} more than once")
    if cfg.rollout.engine in ("sglang", "serve") and not (cfg.rollout.url or cfg.rollout.urls):
        _refuse("rollout.url", f"rollout.engine={cfg.rollout.engine} talks to a server at rollout.url, which is empty "
                               f"(or to several, listed in rollout.urls)")
    task_verifier = None
    if cfg.data.task != "jsonl":
        try:
            task_verifier = get_task(cfg.data.task).verifier
        except PluginError as exc:
            _refuse("data.task", str(exc))
    if not (cfg.data.verifier or task_verifier):
        _refuse("data.verifier", f"data.task={cfg.data.task} has no verifier of its own: name one (e.g. math, exact, "
                                 "gym, or package.module:function)")
    try:
        VERIFIERS.resolve(cfg.data.verifier or task_verifier)
    except PluginError as exc:
        _refuse("data.verifier", str(exc))


def check_platform(cfg: RunConfig) -> None:
    """Refuse, before any process group or model exists, what this machine cannot run or cannot find.

    Kept apart from :func:`load_config` so that a GPU recipe can be validated on a CPU machine."""
    import torch

    from megatron_sgpo.model.build import use_transformer_engine
    from megatron_sgpo.platform import te

    for key in ("model.hf_path", "model.megatron_path", "data.train_file", "data.eval_file"):
        section, name = key.split(".")
        path = getattr(getattr(cfg, section), name)
        if path and not os.path.exists(path):
            _refuse(key, f"{path} does not exist")
    megatron_path = cfg.model.megatron_path
    if megatron_path and not os.path.exists(os.path.join(megatron_path, "sgpo_conversion.json")):
        _refuse("model.megatron_path", f"{megatron_path} has no sgpo_conversion.json: give the output of "
                                       "tools/convert_hf_to_megatron.py or a run checkpoint's dist/ folder")
    p = cfg.model.parallel
    if p.sequence_parallel and torch.cuda.is_available() and not use_transformer_engine():
        _refuse("model.parallel.sequence_parallel", "needs Transformer Engine on a CUDA GPU: megatron's local layer "
                                                    "spec refuses it there (only the CPU layer has an SP norm)")
    if p.fp8 and not use_transformer_engine():
        _refuse("model.parallel.fp8",
                f"needs Transformer Engine and a CUDA GPU ({te.unavailable_reason() or 'no GPU'})")


# ---------------------------------------------------------------------- YAML -> dataclasses
def _build(cls, data, path: str):
    """Instantiate dataclass ``cls`` from a dict, recursively, naming bad keys by their dotted path."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {path or '<root>'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = ", ".join(f"{path}.{k}" if path else k for k in unknown)
        raise ConfigError(f"unknown config key(s): {where}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        dotted = f"{path}.{key}" if path else key
        allowed = literal_values(hint)
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, dotted)
        elif allowed is not None:
            if value not in allowed:
                raise ConfigError(f"config key {dotted}: {value!r} is not one of {', '.join(map(repr, allowed))}")
            kwargs[key] = value
        elif hint in (tuple, typing.Tuple) or typing.get_origin(hint) is tuple:
            kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        else:
            kwargs[key] = _coerce(hint, value, dotted)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config section {path or '<root>'}: {exc}") from None


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
    raise ConfigError(f"config key {dotted}: {value!r} is not a {' or '.join(a.__name__ for a in allowed)}")


def _get_dotted(tree: dict, dotted: str):
    node = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _set_dotted(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
    node[keys[-1]] = value


def _check_moved(tree: dict) -> None:
    for old, new in MOVED.items():
        if _get_dotted(tree, old) is not None:
            raise ConfigError(f"config key {old} has moved: use {new}")
    for old, why in REMOVED.items():
        if _get_dotted(tree, old) is not None:
            raise ConfigError(f"config key {old} was removed: {why}")


def _apply_preset(tree: dict) -> None:
    mode = _get_dotted(tree, "run.mode") or RunSection.mode
    for key, value in PRESETS.get(mode, {}).items():
        given = _get_dotted(tree, key)
        if given is not None and given != value:
            raise ConfigError(f"config key {key}={given!r} contradicts run.mode={mode}, which sets it to {value!r}")
        _set_dotted(tree, key, value)


def load_config(path: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML (optional) and apply ``key.sub=value`` overrides (values parsed as YAML scalars)."""
    tree: dict = {}
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file {path} does not exist")
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    _check_moved(tree)
    _apply_preset(tree)
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
