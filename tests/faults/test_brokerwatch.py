"""The dropped-messages watcher's arithmetic: only increases count, a broker restart resets the baseline."""

from __future__ import annotations

import logging

import pytest

from gateway.brokerwatch import BrokerDropWatch
from rpmgw.settings import MqttSettings


@pytest.mark.parametrize(
    ("totals", "increases", "dropped", "errors"),
    [
        ([0, 0, 0], [0, 0, 0], 0, 0),  # a healthy broker: silence
        ([0, 5, 5, 12], [0, 5, 0, 7], 12, 2),  # every increase is an ERROR line
        ([3, 3], [0, 0], 0, 1),  # drops before we started: reported once, not counted as ours
        ([0, 9, 0, 4], [0, 9, 0, 4], 13, 2),  # the broker restarted and counts from zero again
    ],
)
def test_increases_are_counted_and_logged(
    totals: list[int], increases: list[int], dropped: int, errors: int, caplog: pytest.LogCaptureFixture
) -> None:
    watch = BrokerDropWatch(MqttSettings())
    with caplog.at_level(logging.ERROR, logger="gateway.brokerwatch"):
        assert [watch.observe(total) for total in totals] == increases
    assert watch.dropped == dropped
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == errors
