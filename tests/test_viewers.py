"""How many tabs watch, and how often each redraws the Live tab for that many (issue #20)."""

import math
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard.viewers import (
    REDRAWS_PER_SECOND,
    MAX_REFRESH_SECONDS,
    SEEN_WITHIN_SECONDS,
    ViewerCount,
    refresh_seconds,
)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_tabs_are_counted_once_each_and_forgotten_when_they_stop_refreshing():
    clock = Clock()
    viewers = ViewerCount(clock)
    assert viewers.seen("a") == 1
    assert viewers.seen("a") == 1  # the same tab again
    assert viewers.seen("b") == 2
    clock.now += SEEN_WITHIN_SECONDS - 0.5
    assert viewers.seen("b") == 2  # "a" was seen just within the window: still watching
    clock.now += 1.0
    assert viewers.seen("b") == 1  # "a" closed its tab: not seen for longer than the window


def test_many_sessions_report_at_once():
    viewers = ViewerCount()
    threads = [threading.Thread(target=lambda name=name: [viewers.seen(name) for _ in range(200)]) for name in "abcdefghij"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert viewers.seen("a") == 10


def test_the_refresh_stretches_in_whole_steps_with_the_tabs():
    assert [refresh_seconds(1.0, tabs) for tabs in range(1, 17)] == [
        1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0,
    ]  # fmt: skip
    assert refresh_seconds(0.5, 1) == 0.5  # waiting for the first step: faster still


@given(refresh=st.sampled_from([0.5, 1.0, 2.0]), tabs=st.integers(1, 1_000))
def test_all_tabs_together_redraw_at_most_the_budget_until_the_cap(refresh, tabs):
    seconds = refresh_seconds(refresh, tabs)
    assert refresh <= seconds <= max(refresh, MAX_REFRESH_SECONDS)
    if tabs <= REDRAWS_PER_SECOND * refresh:
        assert seconds == refresh  # a few tabs keep the one-tab refresh
    elif seconds < MAX_REFRESH_SECONDS:
        assert tabs / seconds <= REDRAWS_PER_SECOND + 1e-9


@given(bad=st.one_of(st.integers(max_value=0), st.just(-math.inf)))
def test_a_count_below_one_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=rf"viewers must be at least 1\. Received: viewers={bad!r}"):
        refresh_seconds(1.0, bad)
