"""Reward functions: a response text and a TaskItem in, a reward in [0, 1] out.

Verifiers run inside the rollout loop, where one pathological response (a 10k-digit
expression, a parser bug) must not stall or kill a training step. ``GuardedVerifier``
therefore runs any verifier in a worker thread with a timeout and turns exceptions
and timeouts into reward 0 with a counted warning. Only when every item of a batch
fails is the verifier itself assumed broken (wrong task name, missing dependency), and
that raises an error naming it.

``VERIFIERS`` resolves a config's ``data.verifier``: a built-in name or a plug-in by dotted path
(``my_rewards:score``), which may be a plain function ``(item, response_text) -> float``.
"""
from __future__ import annotations

import logging
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

from megatron_sgpo.plugins import PluginError, Registry
from megatron_sgpo.tasks.dataset import TaskItem

log = logging.getLogger(__name__)


@runtime_checkable
class Verifier(Protocol):
    """Scores one response; must be thread-safe (it is called from worker threads)."""

    name: str

    def score(self, item: TaskItem, response_text: str) -> float: ...


class VerifierFailure(RuntimeError):
    """A verifier failed on every item of a batch: it is misconfigured, not unlucky."""


@dataclass
class VerifierStats:
    calls: int = 0
    errors: int = 0
    timeouts: int = 0


class GuardedVerifier:
    """Any Verifier with a timeout, exception containment and counted warnings.

    A timed-out thread cannot be killed; its executor is abandoned (not waited for) and
    a fresh one serves the next calls, so a stuck parser costs a thread, not the run.
    """

    def __init__(self, verifier: Verifier, timeout_s: float | None = 10.0, max_warnings: int = 20):
        self.inner = verifier
        self.name = getattr(verifier, "name", type(verifier).__name__)
        self.timeout_s = timeout_s
        self.max_warnings = max_warnings
        self.stats = VerifierStats()
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"verify-{self.name}")

    def _warn(self, kind: str, item: TaskItem, detail: str) -> None:
        failures = self.stats.errors + self.stats.timeouts
        if failures <= self.max_warnings:
            log.warning("verifier %r %s on item %r (reward 0): %s%s", self.name, kind, item.id,
                        detail, "; further warnings suppressed" if failures == self.max_warnings else "")

    def _score(self, item: TaskItem, response_text: str) -> tuple[float, str | None]:
        """(reward, failure message or None)."""
        with self._lock:
            self.stats.calls += 1
            pool = self._pool
        try:
            future = pool.submit(self.inner.score, item, response_text)
            value = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            with self._lock:
                self.stats.timeouts += 1
                if self._pool is pool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._new_pool()
            self._warn("timed out", item, f"after {self.timeout_s}s")
            return 0.0, f"timed out after {self.timeout_s}s"
        except Exception as e:  # noqa: BLE001 - containing verifier bugs is the point
            with self._lock:
                self.stats.errors += 1
            self._warn("raised", item, f"{type(e).__name__}: {e}")
            return 0.0, f"{type(e).__name__}: {e}"
        try:
            value = float(value)
        except (TypeError, ValueError):
            return 0.0, None
        return (0.0 if math.isnan(value) else min(1.0, max(0.0, value))), None

    def score(self, item: TaskItem, response_text: str) -> float:
        return self._score(item, response_text)[0]

    def score_batch(self, items: Sequence[TaskItem], responses: Sequence[str]) -> list[float]:
        """Rewards for a batch; raises VerifierFailure if every item (of ≥ 2) failed."""
        if len(items) != len(responses):
            raise ValueError(f"{len(items)} items but {len(responses)} responses")
        results = [self._score(it, r) for it, r in zip(items, responses)]
        failures = [msg for _, msg in results if msg is not None]
        if len(items) >= 2 and len(failures) == len(items):
            raise VerifierFailure(
                f"verifier {self.name!r} failed on all {len(items)} items of the batch "
                f"(first failure: {failures[0]}); check the task/verifier pairing")
        return [r for r, _ in results]


class _DropDisabledTimeoutNotice(logging.Filter):
    """math-verify warns on every call without its signal timeout; ours replaces it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


_NOTICE_FILTER = _DropDisabledTimeoutNotice()


class MathVerifier:
    """math-verify: symbolic equivalence of the response's final answer and the gold answer.

    Signal-based timeouts are disabled (they only work on the main thread); wrap it in
    GuardedVerifier, as ``get_verifier`` does, for the timeout.
    """

    name = "math"

    def __init__(self):
        from math_verify import parse, verify  # optional dependency: pip install math-verify

        self._parse, self._verify = parse, verify
        for name in ("math_verify.parser", "math_verify.grader"):
            if _NOTICE_FILTER not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(_NOTICE_FILTER)

    def score(self, item: TaskItem, response_text: str) -> float:
        gold = self._parse(item.answer, parsing_timeout=None)
        if not gold:
            gold = self._parse(f"${item.answer}$", parsing_timeout=None)
        pred = self._parse(response_text, parsing_timeout=None)
        if not gold or not pred:
            return 0.0
        return float(self._verify(gold, pred, timeout_seconds=None))


_FINAL_MARKERS = [re.compile(p, re.IGNORECASE) for p in (r"####", r"answer\s*(?:is)?\s*:", r"=")]
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")


def final_answer(text: str) -> str:
    """The final-answer part of a response, by the first marker kind present.

    Order: text after the last "####" (GSM8K style), else after the last "answer:" /
    "answer is:" (any case), else after the last "=", else the whole text; then its first
    non-empty line.
    """
    for marker in _FINAL_MARKERS:
        matches = list(marker.finditer(text))
        if matches:
            text = text[matches[-1].end():]
            break
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else ""


def normalise(text: str) -> str:
    """Lower case, no $ or trailing period, no thousands commas, numbers canonical (82.0 → 82)."""
    s = " ".join(text.strip().lower().replace("$", "").split()).rstrip(".").strip()
    compact = s.replace(",", "").replace(" ", "")
    if _NUMBER.match(compact):
        value = float(compact)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return s


class ExactAnswerVerifier:
    """Reward 1 iff normalise(final_answer(response)) == normalise(answer)."""

    name = "exact"

    def score(self, item: TaskItem, response_text: str) -> float:
        return float(normalise(final_answer(response_text)) == normalise(item.answer))


class GymVerifier:
    """reasoning-gym's own ``score_answer``; only a score of 1.0 counts (partial credit → 0).

    Items need meta["gym_task"] (and the original meta["gym_metadata"]), as written by
    ``megatron_sgpo.tasks.gym``. The answer is the last <answer>…</answer> block of the
    response (reasoning-gym's convention) if there is one, else the whole stripped response
    (a countdown answer is an expression, so "text after '='" would cut it).
    """

    name = "gym"

    def __init__(self):
        self._datasets: dict[str, object] = {}
        self._lock = threading.Lock()

    def _dataset(self, task: str):
        with self._lock:
            if task not in self._datasets:
                import reasoning_gym

                self._datasets[task] = reasoning_gym.create_dataset(task, size=1, seed=0)
            return self._datasets[task]

    def score(self, item: TaskItem, response_text: str) -> float:
        from reasoning_gym.utils import extract_answer

        task = item.meta.get("gym_task")
        if not task:
            raise ValueError(f"item {item.id!r} has no meta['gym_task']")
        answer = extract_answer(response_text)
        if answer is None:
            answer = response_text.strip()
        entry = {"question": item.prompt, "answer": item.answer,
                 "metadata": item.meta.get("gym_metadata", {})}
        return 1.0 if self._dataset(task).score_answer(answer, entry) >= 1.0 else 0.0


VERIFIERS = Registry(
    "verifier", "a class or object with score(item, response_text) -> float, or such a function",
    builtin={"math": "megatron_sgpo.tasks.verifiers:MathVerifier",
             "exact": "megatron_sgpo.tasks.verifiers:ExactAnswerVerifier",
             "gym": "megatron_sgpo.tasks.verifiers:GymVerifier",
             "arith": "megatron_sgpo.tasks.arith:ArithVerifier"})


class FunctionVerifier:
    """A plain reward function ``(item, response_text) -> float`` as a Verifier."""

    def __init__(self, name: str, fn: Callable[[TaskItem, str], float]):
        self.name, self.fn = name, fn

    def score(self, item: TaskItem, response_text: str) -> float:
        return self.fn(item, response_text)


def make_verifier(name: str) -> Verifier:
    """A built-in verifier or a plug-in by dotted path (classes are instantiated without arguments)."""
    obj = VERIFIERS.resolve(name)
    if isinstance(obj, type):
        obj = obj()
    if callable(getattr(obj, "score", None)):
        return obj
    if callable(obj):
        return FunctionVerifier(name, obj)
    raise PluginError(f"verifier {name!r} is a {type(obj).__name__}, not {VERIFIERS.contract}")


def get_verifier(name: str, timeout_s: float | None = 10.0) -> GuardedVerifier:
    """A verifier by name or dotted path, wrapped in GuardedVerifier."""
    return GuardedVerifier(make_verifier(name), timeout_s=timeout_s)
