"""Link quality from probes: RTT, jitter and loss over a window, and their bands."""

from __future__ import annotations

import pytest

from infrafabric.mesh.quality import Band, LinkQuality, band_of


@pytest.mark.parametrize(
    ("rtt", "jitter", "loss", "band"),
    [
        (10, 2, 0, Band.EXCELLENT),
        (49.9, 9.9, 0.9, Band.EXCELLENT),
        (50, 2, 0, Band.GOOD),
        (10, 15, 0, Band.GOOD),
        (10, 2, 2, Band.GOOD),
        (120, 2, 0, Band.FAIR),
        (10, 25, 0, Band.FAIR),
        (10, 2, 4, Band.FAIR),
        (150, 2, 0, Band.POOR),
        (10, 30, 0, Band.POOR),
        (10, 2, 5, Band.POOR),
    ],
)
def test_the_band_is_the_worst_of_the_three(
    rtt: float, jitter: float, loss: float, band: Band
) -> None:
    assert band_of(rtt, jitter, loss) == band


def test_rtt_jitter_and_loss_over_the_window() -> None:
    link = LinkQuality(window=5, timeout=1.0)
    now = 0.0
    assert link.snapshot(now) is None
    for rtt in (0.010, 0.030, 0.020, None, 0.020):  # one probe unanswered
        number = link.probe(now)
        if rtt is not None:
            assert link.answered(number, now + rtt) == pytest.approx(rtt)
        now += 2.0
    quality = link.snapshot(now)
    assert quality is not None
    assert quality.rtt_ms == pytest.approx(20.0)
    assert quality.jitter_ms == pytest.approx((20 + 10 + 0) / 3)  # between answered ones
    assert quality.loss_percent == pytest.approx(20.0)
    assert quality.band == Band.POOR  # 20 % loss


def test_a_late_or_unknown_answer_counts_for_nothing() -> None:
    link = LinkQuality(window=3, timeout=1.0)
    number = link.probe(0.0)
    assert link.answered(number, 1.5) is None  # past its timeout: lost
    assert link.answered(999, 1.6) is None
    for _ in range(5):  # the window moves on: the first probe is forgotten
        link.answered(link.probe(2.0), 2.01)
    quality = link.snapshot(3.0)
    assert quality is not None
    assert (quality.probes, quality.loss_percent) == (3, 0.0)


def test_a_link_that_answers_nothing_is_poor() -> None:
    link = LinkQuality(window=3, timeout=1.0)
    link.probe(0.0)
    quality = link.snapshot(5.0)
    assert quality is not None
    assert (quality.rtt_ms, quality.loss_percent, quality.band) == (None, 100.0, Band.POOR)
