"""ParallelLayout validation and the padding rules of pad_length."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_sgpo.batch.padding import length_multiple, pad_length
from megatron_sgpo.platform.layout import ParallelLayout


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dp=0), "dp must be None or an integer >= 1"),
        (dict(tp=2.0), "tp must be an integer >= 1"),
        (dict(cp=True), "cp must be an integer >= 1"),
        (dict(tp=0), "tp must be an integer >= 1, got 0"),
        (dict(pp=1, vpp=2), r"vpp=2 needs pipeline parallelism \(pp >= 2\), got pp=1"),
        (dict(pp=2, vpp=0), "vpp must be None or an integer >= 1"),
        (dict(tp=1, sequence_parallel=True), r"sequence_parallel=True needs tensor parallelism \(tp >= 2\)"),
        (dict(fp8_recipe="delayed"), "fp8_recipe='delayed' given but fp8 is off"),
        (dict(fp8="e5m2"), "fp8 must be one of"),
        (dict(fp8="e4m3", fp8_recipe="fp4"), "fp8_recipe must be one of"),
    ],
)
def test_invalid_layouts_are_rejected_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParallelLayout(**kwargs)


@pytest.mark.parametrize(
    "kwargs, multiple",
    [
        (dict(), 1),
        (dict(tp=4), 1),  # TP without SP does not split the sequence
        (dict(tp=4, sequence_parallel=True), 4),
        (dict(cp=2), 4),
        (dict(cp=3), 6),
        (dict(tp=2, cp=2, sequence_parallel=True), 4),
        (dict(tp=4, cp=2, sequence_parallel=True), 8),  # lcm(4, 2·2) = 4 would leave 2 tokens per CP rank for 4 SP ranks
        (dict(tp=3, cp=2, sequence_parallel=True), 12),
        (dict(fp8="e4m3"), 16),
        (dict(fp8="e4m3", fp8_recipe="tensorwise"), 16),
        (dict(fp8="e4m3", fp8_recipe="blockwise"), 128),
        (dict(fp8="e4m3", fp8_recipe="mxfp8"), 128),
        (dict(fp8="e4m3", tp=3, sequence_parallel=True), 48),
        (dict(fp8="e4m3", cp=3), 48),
        (dict(fp8="e4m3", fp8_recipe="blockwise", cp=2, tp=8, sequence_parallel=True), 256),
    ],
)
def test_length_multiple_is_the_lcm_of_the_rules_that_apply(kwargs, multiple):
    layout = ParallelLayout(**kwargs)
    assert length_multiple(layout) == multiple
    assert pad_length(1, layout) == multiple
    assert pad_length(multiple, layout) == multiple
    assert pad_length(multiple + 1, layout) == 2 * multiple


layouts = st.builds(
    lambda tp, sp, cp, fp8, recipe: ParallelLayout(
        tp=tp, sequence_parallel=sp and tp > 1, cp=cp, fp8="e4m3" if fp8 else None, fp8_recipe=recipe if fp8 else None
    ),
    st.integers(1, 8),
    st.booleans(),
    st.integers(1, 8),
    st.booleans(),
    st.sampled_from([None, "delayed", "tensorwise", "blockwise", "mxfp8"]),
)


@settings(max_examples=200, deadline=None)
@given(layouts, st.integers(1, 200_000))
def test_padded_length_satisfies_every_rule_and_is_the_smallest(layout, length):
    padded = pad_length(length, layout)
    m = length_multiple(layout)
    assert length <= padded < length + m
    if layout.cp > 1:
        assert padded % (2 * layout.cp) == 0
    if layout.sequence_parallel:
        assert (padded // layout.cp) % layout.tp == 0 and padded % layout.cp == 0
    if layout.fp8:
        align = 128 if layout.fp8_recipe in ("blockwise", "mxfp8") else 16
        assert padded % layout.cp == 0 and (padded // layout.cp) % align == 0
    assert pad_length(np.array([length, length + 1]), layout).tolist() == [padded, pad_length(length + 1, layout)]
