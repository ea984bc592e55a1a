"""``_hot_metrics``: the per-request series print exactly what prometheus-client's own would."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from mesh_images_asgi._observe.hot_metrics import HotCounter, HotHistogram

BUCKETS = (0.005, 0.01, 0.1, 1, 10)
VALUES = (0.0001, 0.005, 0.0051, 0.01, 0.5, 1, 10, 11, 300)


def _without_created(text: bytes) -> str:
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", text.decode())


def _pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = HotCounter("demo_requests", "Requests.", ("route", "status"), registry=ours)
    histogram = HotHistogram("demo_seconds", "Time.", ("route",), BUCKETS, registry=ours)
    their_counter = Counter("demo_requests", "Requests.", ("route", "status"), registry=theirs)
    their_histogram = Histogram(
        "demo_seconds", "Time.", ("route",), buckets=BUCKETS, registry=theirs
    )
    for route in ("/a", "/b"):
        for value in VALUES:
            histogram(route).observe(value)
            their_histogram.labels(route).observe(value)
        counter(route, "200").inc()
        counter(route, "200").inc(2.5)
        their_counter.labels(route, "200").inc()
        their_counter.labels(route, "200").inc(2.5)
    return ours, theirs


@pytest.mark.parametrize("render", [generate_latest, openmetrics_latest])
def test_the_exposition_is_prometheus_clients_own(render: object) -> None:
    ours, theirs = _pair()
    assert callable(render)
    assert _without_created(render(ours)) == _without_created(render(theirs))


def test_empty_series_print_their_help_and_type_only() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    HotCounter("demo_requests", "Requests.", ("route",), registry=ours)
    Counter("demo_requests", "Requests.", ("route",), registry=theirs)
    assert generate_latest(ours) == generate_latest(theirs)


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    histogram = HotHistogram("demo_seconds", "Time.", (), (1, 2))
    histogram().observe(1)
    histogram().observe(2.0000001)
    assert histogram().counts == [1, 0, 1]
    assert histogram().sum == pytest.approx(3.0000001)


def test_mistakes_are_refused() -> None:
    counter = HotCounter("demo_requests", "Requests.", ("route",))
    with pytest.raises(ValueError, match="labels"):
        counter("/a", "extra")
    with pytest.raises(ValueError, match="only go up"):
        counter("/a").inc(-1)
    with pytest.raises(ValueError, match="increasing"):
        HotHistogram("demo_seconds", "Time.", (), (2, 1))


def test_a_name_is_registered_once() -> None:
    registry = CollectorRegistry()
    HotCounter("demo_requests", "Requests.", ("route",), registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("demo_requests", "Requests.", ("route",), registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        HotHistogram("demo_requests", "Requests.", (), BUCKETS, registry=registry)
