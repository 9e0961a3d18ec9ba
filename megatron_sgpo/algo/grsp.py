"""GRSP: Group Relative Segment Penalization (segment-level length penalty).

Overthinking shows up as many reasoning segments rather than as raw tokens, so
the penalty counts segments, weighted by the length cluster each segment falls
in, and is made group-relative before it is subtracted from the reward or the
advantage.

Direction of the weights (GRSP, Song et al. 2025, arXiv:2510.09535): the paper
reports that *descending* weights beat ascending ones, i.e. with clusters
ordered from shortest to longest segments the weights decrease, so short
segments (frequent "Wait"/"Alternatively" switches) are penalised most and long,
substantive steps least. ``weighting="ascending"`` is the paper's ablation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np

from megatron_sgpo.choices import check_choices

DEFAULT_CUES = ("Wait", "Alternatively", "But", "So", "Therefore", "Hmm", "However")


@dataclass(frozen=True)
class GRSPConfig:
    """``coef`` scales the group-relative penalty; ``target`` says what it is subtracted from."""

    cues: tuple[str, ...] = DEFAULT_CUES
    split_on_paragraph: bool = True
    logprob_threshold: Optional[float] = None
    num_clusters: int = 3
    cluster_method: Literal["kmeans", "quantile"] = "kmeans"
    weighting: Literal["descending", "ascending"] = "descending"
    coef: float = 0.1
    target: Literal["advantage", "reward"] = "advantage"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_choices(self)
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {self.num_clusters}")
        if self.coef < 0:
            raise ValueError(f"coef must be >= 0, got {self.coef}")


def split_by_keywords(text: str, cues: Sequence[str] = DEFAULT_CUES, split_on_paragraph: bool = True) -> list[str]:
    """Cut before each cue word (case-sensitive, whole word) and at blank-line paragraph breaks."""
    parts = [text]
    if split_on_paragraph:
        parts = re.split(r"\n\s*\n", text)
    if cues:
        pattern = re.compile(r"(?=\b(?:" + "|".join(re.escape(c) for c in cues) + r")\b)")
        parts = [seg for p in parts for seg in pattern.split(p)]
    return [s.strip() for s in parts if s.strip()]


def split_by_confidence(logprobs: Sequence[float], threshold: float) -> list[int]:
    """Token lengths of segments cut before every token with log-prob < threshold.

    A low-confidence token marks where the model hesitates, i.e. a step boundary.
    """
    lengths: list[int] = []
    current = 0
    for i, lp in enumerate(logprobs):
        if lp < threshold and i > 0 and current > 0:
            lengths.append(current)
            current = 0
        current += 1
    if current:
        lengths.append(current)
    return lengths


def segment_lengths(text: str, cfg: GRSPConfig, logprobs: Sequence[float] | None = None) -> list[int]:
    """Segment lengths: tokens with log-probs and a threshold, else words of keyword segments."""
    if logprobs is not None and cfg.logprob_threshold is not None:
        return split_by_confidence(logprobs, cfg.logprob_threshold)
    return [len(s.split()) for s in split_by_keywords(text, cfg.cues, cfg.split_on_paragraph)]


def cluster_lengths(lengths: Sequence[float], k: int, method: str = "kmeans") -> np.ndarray:
    """Deterministic 1-D clustering; labels 0..k'-1 ordered from shortest to longest cluster.

    k-means starts from k evenly spread distinct values (so ties cannot merge
    the initial centroids) and runs Lloyd steps to a fixed point; ``quantile`` uses equal-mass bins. Fewer
    distinct lengths than k give fewer clusters.
    """
    x = np.asarray(lengths, dtype=np.float64)
    if x.size == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, np.unique(x).size)
    if k <= 1:
        return np.zeros(x.size, dtype=np.int64)
    if method == "quantile":
        edges = np.quantile(x, np.linspace(0, 1, k + 1)[1:-1])
        labels = np.searchsorted(edges, x, side="right")
    else:
        distinct = np.unique(x)
        centroids = distinct[np.round(np.linspace(0, distinct.size - 1, k)).astype(int)]
        for _ in range(100):
            labels = np.argmin(np.abs(x[:, None] - centroids[None, :]), axis=1)
            new = np.array([x[labels == j].mean() for j in range(centroids.size) if (labels == j).any()])
            if new.size == centroids.size and np.allclose(new, centroids):
                break
            centroids = np.sort(new)
        labels = np.argmin(np.abs(x[:, None] - centroids[None, :]), axis=1)
    # Relabel to consecutive ids ordered by length.
    _, labels = np.unique(labels, return_inverse=True)
    return labels.astype(np.int64)


def cluster_weights(k: int, weighting: str = "descending") -> np.ndarray:
    """Weights for clusters ordered short to long: descending = (k, k-1, ..., 1) / k."""
    w = np.arange(k, 0, -1, dtype=np.float64) / k
    return w if weighting == "descending" else w[::-1].copy()


def segment_penalties(
    texts: Sequence[str], cfg: GRSPConfig, logprobs: Sequence[Sequence[float]] | None = None
) -> np.ndarray:
    """Raw penalty per response of one group: sum over its segments of the cluster weight.

    Segments of the whole group are clustered together, so "short" is relative
    to the group's own responses.
    """
    if logprobs is not None and len(logprobs) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(logprobs)} log-prob lists")
    per_resp = [segment_lengths(t, cfg, None if logprobs is None else logprobs[i]) for i, t in enumerate(texts)]
    flat = [n for seg in per_resp for n in seg]
    labels = cluster_lengths(flat, cfg.num_clusters, cfg.cluster_method)
    n_clusters = int(labels.max()) + 1 if labels.size else 1
    w = cluster_weights(n_clusters, cfg.weighting)
    out = np.zeros(len(texts))
    pos = 0
    for i, seg in enumerate(per_resp):
        out[i] = w[labels[pos : pos + len(seg)]].sum()
        pos += len(seg)
    return out


def group_relative(penalties: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """(P - mean) / (std + eps) within the group; zeros when all penalties are equal."""
    p = np.asarray(penalties, dtype=np.float64)
    if p.size <= 1 or np.all(p == p[0]):
        return np.zeros_like(p)
    return (p - p.mean()) / (p.std() + eps)


def apply_grsp(
    values: Sequence[float] | np.ndarray,
    texts: Sequence[str],
    cfg: GRSPConfig,
    logprobs: Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
    """values - coef * group_relative(penalty) for one group (rewards or advantages per cfg.target)."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (len(texts),):
        raise ValueError(f"values must have one entry per text ({len(texts)}), got shape {v.shape}")
    return v - cfg.coef * group_relative(segment_penalties(texts, cfg, logprobs), cfg.eps)
