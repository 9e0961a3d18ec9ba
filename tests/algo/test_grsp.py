"""GRSP segmentation, clustering, weight direction and the group-relative penalty."""
import numpy as np
import pytest

from megatron_sgpo.algo.grsp import (
    GRSPConfig,
    apply_grsp,
    cluster_lengths,
    cluster_weights,
    segment_lengths,
    segment_penalties,
    split_by_confidence,
    split_by_keywords,
)


def test_keyword_and_paragraph_split():
    text = "Let x be 2. So x+1 is 3. Wait, check.\n\nTherefore 3. Sometimes But"
    assert split_by_keywords(text) == ["Let x be 2.", "So x+1 is 3.", "Wait, check.", "Therefore 3. Sometimes", "But"]
    # whole-word and case-sensitive: "Sometimes" and "so" are not cues
    assert split_by_keywords("also so Soon", cues=("So",)) == ["also so Soon"]
    assert split_by_keywords("a\n\nb", cues=(), split_on_paragraph=False) == ["a\n\nb"]


def test_confidence_split():
    lps = [-0.1, -0.2, -3.0, -0.1, -5.0, -4.0, -0.1]
    assert split_by_confidence(lps, threshold=-2.0) == [2, 2, 1, 2]
    assert split_by_confidence([-9.0, -0.1], threshold=-2.0) == [2]  # a first token never opens an empty segment
    cfg = GRSPConfig(logprob_threshold=-2.0)
    assert segment_lengths("ignored text", cfg, logprobs=lps) == [2, 2, 1, 2]
    assert segment_lengths("one two. So three", GRSPConfig()) == [2, 2]


def test_cluster_lengths_deterministic_and_ordered():
    x = [1, 2, 2, 30, 31, 29, 100, 120]
    for method in ("kmeans", "quantile"):
        labels = cluster_lengths(x, 3, method)
        assert labels.tolist() == cluster_lengths(x, 3, method).tolist()
        # labels are monotone in length: shorter never gets a larger label
        order = np.argsort(x, kind="stable")
        assert np.all(np.diff(labels[order]) >= 0)
    assert cluster_lengths(x, 3, "kmeans").tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert cluster_lengths([5, 5, 5], 3).tolist() == [0, 0, 0]
    assert cluster_lengths([], 3).size == 0


def test_weights_descend_from_short_to_long():
    np.testing.assert_allclose(cluster_weights(3, "descending"), [1.0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(cluster_weights(3, "ascending"), [1 / 3, 2 / 3, 1.0])


def test_penalty_by_hand():
    cfg = GRSPConfig(num_clusters=2, cues=("Wait",), split_on_paragraph=False)
    long_step = " ".join(["w"] * 20)
    texts = [long_step, "a b Wait c d Wait e f Wait g h"]
    # segments: [20] and [2, 3, 3, 3] -> clusters: short {2,3,3,3}, long {20}; weights 1, 1/2
    np.testing.assert_allclose(segment_penalties(texts, cfg), [0.5, 4.0])
    asc = GRSPConfig(num_clusters=2, cues=("Wait",), split_on_paragraph=False, weighting="ascending")
    np.testing.assert_allclose(segment_penalties(texts, asc), [1.0, 2.0])


def test_apply_is_group_relative():
    cfg = GRSPConfig(num_clusters=2, cues=("Wait",), split_on_paragraph=False, coef=0.2, eps=0.0)
    texts = [" ".join(["w"] * 20), "a b Wait c d Wait e f Wait g h"]
    out = apply_grsp([1.0, 1.0], texts, cfg)
    np.testing.assert_allclose(out, [1.2, 0.8])  # z = (-1, +1) for penalties (0.5, 4.0)
    same = apply_grsp([0.3, -0.3], ["x y", "x y"], cfg)
    np.testing.assert_allclose(same, [0.3, -0.3])


def test_validation():
    with pytest.raises(ValueError, match="weighting must be one of 'descending', 'ascending'; got 'flat'"):
        GRSPConfig(weighting="flat")
    with pytest.raises(ValueError, match="target must be one of 'advantage', 'reward'; got 'logits'"):
        GRSPConfig(target="logits")
    with pytest.raises(ValueError, match=r"values must have one entry per text \(2\)"):
        apply_grsp([1.0], ["a", "b"], GRSPConfig())
