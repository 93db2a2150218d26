import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.fusion import INF, Estimate, fuse, fuse2, weights


def test_two_sources_hand_computed():
    # weights 1/1 and 1/4 -> normalised 0.8 and 0.2; variance 1 / (1 + 0.25)
    e = fuse([Estimate(10.0, 1.0), Estimate(20.0, 4.0)])
    assert e.value == pytest.approx(12.0)
    assert e.variance == pytest.approx(0.8)
    assert weights([1.0, 4.0]) == pytest.approx([0.8, 0.2])


def test_three_sources_hand_computed():
    # inverse variances 1, 1, 0.5 (sum 2.5) -> weights 0.4, 0.4, 0.2
    e = fuse([(1.0, 1.0), (2.0, 1.0), (4.0, 2.0)])
    assert e.value == pytest.approx(0.4 * 1 + 0.4 * 2 + 0.2 * 4)
    assert e.variance == pytest.approx(1 / 2.5)
    assert weights([1.0, 1.0, 2.0]) == pytest.approx([0.4, 0.4, 0.2])


def test_no_source_and_single_source():
    assert fuse([]) is None
    assert weights([]) == []
    assert fuse([(3.5, 0.7)]) == Estimate(3.5, 0.7)
    assert fuse([(3.5, INF)]) == Estimate(3.5, INF)


def test_zero_variance_sources_are_exact():
    assert fuse([(5.0, 0.0), (100.0, 1.0)]) == Estimate(5.0, 0.0)
    assert fuse([(4.0, 0.0), (6.0, 0.0), (100.0, 1e-9)]) == Estimate(5.0, 0.0)
    assert weights([0.0, 1.0, 0.0]) == [0.5, 0.0, 0.5]


def test_infinite_variance_carries_no_weight():
    assert fuse([(5.0, INF), (7.0, 2.0)]) == Estimate(7.0, 2.0)
    assert fuse([(5.0, INF), (7.0, INF)]) == Estimate(6.0, INF)
    assert weights([INF, 2.0]) == [0.0, 1.0]
    assert weights([INF, INF]) == [0.5, 0.5]


@pytest.mark.parametrize("bad", [(1.0, -1.0), (math.nan, 1.0), (1.0, math.nan)])
def test_invalid_estimates_raise(bad):
    with pytest.raises(ValueError):
        fuse([bad])


variances = st.one_of(st.just(0.0), st.just(INF), st.floats(min_value=1e-9, max_value=1e9))
values = st.floats(min_value=-1e6, max_value=1e6)


@given(values, variances, values, variances)
def test_fuse2_matches_fuse(v1, s1, v2, s2):
    fast = fuse2(v1, s1, v2, s2)
    ref = fuse([(v1, s1), (v2, s2)])
    assert fast[0] == pytest.approx(ref.value, rel=1e-9, abs=1e-9)
    assert fast[1] == pytest.approx(ref.variance, rel=1e-9, abs=1e-12)
    assert fuse2(v1, s1, None, s2) == (v1, s1)


@given(st.lists(st.tuples(values, st.floats(min_value=1e-6, max_value=1e6)), min_size=1))
def test_fused_value_is_within_sources_and_variance_shrinks(sources):
    e = fuse(sources)
    lo = min(v for v, _ in sources)
    hi = max(v for v, _ in sources)
    assert lo - 1e-6 <= e.value <= hi + 1e-6
    assert e.variance <= min(s for _, s in sources) * (1 + 1e-9)
