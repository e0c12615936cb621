import pytest

from mutualnet_det.engine.cohort import sample_cohort

SCALES = (1.0, 0.8, 0.6, 0.4)


def cohort(method, iteration, seed=0, num_random=2, width_range=(0.25, 1.0)):
    return sample_cohort(method, width_range, num_random, SCALES, seed, iteration)


@pytest.mark.parametrize("method", ["mutualnet", "usnet"])
def test_sandwich_sizes_and_bounds(method):
    for iteration in range(200):
        members = cohort(method, iteration)
        assert len(members) == 4
        assert members[0].width == 1.0 and members[-1].width == 0.25
        assert all(0.25 <= m.width <= 1.0 for m in members)
        assert members[0].resolution_scale == 1.0
        if method == "usnet":
            assert all(m.resolution_scale == 1.0 for m in members)
        else:
            assert all(m.resolution_scale in SCALES for m in members)
    assert len(cohort("mutualnet", 0, num_random=5)) == 7


def test_random_widths_are_spread_and_scales_all_used():
    widths = [m.width for i in range(500) for m in cohort("mutualnet", i)[1:-1]]
    assert min(widths) < 0.3 and max(widths) > 0.95
    assert abs(sum(widths) / len(widths) - 0.625) < 0.03  # mean of U(0.25, 1.0)
    scales = [m.resolution_scale for i in range(500) for m in cohort("mutualnet", i)[1:]]
    assert {round(s, 2) for s in scales} == set(SCALES)


def test_deterministic_per_seed_and_iteration():
    assert cohort("mutualnet", 17, seed=3) == cohort("mutualnet", 17, seed=3)
    assert cohort("mutualnet", 17, seed=3) != cohort("mutualnet", 18, seed=3)
    assert cohort("mutualnet", 17, seed=3) != cohort("mutualnet", 17, seed=4)
    # a resumed run (starting at 50) draws exactly what an uninterrupted run drew at 50..59
    assert [cohort("usnet", i) for i in range(50, 60)] == [cohort("usnet", i) for i in range(50, 60)]


def test_single_is_the_widest_alone():
    assert [(m.width, m.resolution_scale) for m in cohort("single", 5)] == [(1.0, 1.0)]


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="unknown training method"):
        cohort("slimmable", 0)


@pytest.mark.parametrize("method", ["single", "usnet", "mutualnet"])
def test_a_range_below_full_width_bounds_every_member_widest_first(method):
    """With a width range that stops short of 1.0 the widest member is the range's top, no random
    width leaves the range, and members run from the widest down (the order the step relies on)."""
    for iteration in range(50):
        widths = [m.width for m in cohort(method, iteration, num_random=3, width_range=(0.3, 0.8))]
        assert widths[0] == 0.8
        assert all(0.3 <= w <= 0.8 for w in widths)
        assert widths == sorted(widths, reverse=True)
