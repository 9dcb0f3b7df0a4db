"""The metrics store: bounded memory, full-resolution window, whole-run summary, the view."""

import numpy as np
import pytest

from training.store import MetricsStore, STEP_COLUMNS

POLICIES = ("none", "global_norm")


def rows(first_step, count, grad_norm=None, finite=None):
    steps = np.arange(first_step, first_step + count, dtype=np.int64)
    grad = np.linspace(0.5, 1.5, count).astype(np.float32) if grad_norm is None else grad_norm
    return {
        "step": steps,
        "time_s": steps * 1e-3,
        "loss": np.full(count, 0.25, np.float32),
        "grad_norm": grad,
        "clipped_grad_norm": np.minimum(grad, 1.0).astype(np.float32),
        "clip_threshold": np.ones(count, np.float32),
        "clipped": grad > 1.0,
        "finite": np.ones(count, bool) if finite is None else finite,
        "learning_rate": np.full(count, 0.01, np.float32),
        "policy": np.ones(count, np.int8),
        "layer_norms": np.stack([grad, grad / 2], axis=1).astype(np.float32),
    }


def fill(store, total, chunk=997):
    for first in range(1, total + 1, chunk):
        store.append(rows(first, min(chunk, total - first + 1)))


def test_window_keeps_the_newest_steps_in_order_and_since_filters():
    store = MetricsStore(["a", "b"], POLICIES, window=1000, block=128)
    fill(store, 5000, chunk=333)
    metrics = store.metrics()
    assert metrics.step.tolist() == list(range(4001, 5001))
    assert list(metrics.columns) == list(STEP_COLUMNS)
    assert metrics.policy.iloc[0] == "global_norm"
    assert store.metrics(since=4995).step.tolist() == [4996, 4997, 4998, 4999, 5000]
    assert store.metrics(last=3).step.tolist() == [4998, 4999, 5000]
    layers = store.layer_norms(since=4998)
    assert list(layers.columns) == ["step", "a", "b"] and len(layers) == 2


def test_memory_is_bounded_however_long_the_run():
    store = MetricsStore(["a", "b"], POLICIES, window=10_000)
    fill(store, 20_000)
    size_20k = store.nbytes
    fill_more = 200_000
    for first in range(20_001, 20_001 + fill_more, 5000):
        store.append(rows(first, 5000))
    assert store.nbytes <= size_20k * 1.05
    assert store.total_steps == 220_000


def test_summary_covers_the_whole_run_within_its_bucket_budget():
    store = MetricsStore(["a", "b"], POLICIES, window=100, max_buckets=64)
    fill(store, 10_000, chunk=77)
    summary = store.summary()
    assert len(summary["step"]) <= 64
    assert summary["steps"].sum() == 10_000
    assert summary["step"][0] == 1 and summary["last_step"][-1] == 10_000
    expected_clips = sum(
        int(rows(first, min(77, 10_000 - first + 1))["clipped"].sum()) for first in range(1, 10_001, 77)
    )
    assert summary["clipped"].sum() == expected_clips


def test_view_is_bounded_covers_every_step_and_keeps_a_spike():
    store = MetricsStore(["a", "b"], POLICIES, window=10_000)
    total = 300_000
    for first in range(1, total + 1, 10_000):
        chunk = rows(first, 10_000)
        if first == 150_001:
            chunk["grad_norm"][1234] = 1e6  # one spike deep in the past
        store.append(chunk)
    view, layers = store.view(max_points=2000)
    assert len(view) <= 2000 and len(layers) == len(view)
    assert view.steps.sum() == total
    assert view.grad_norm.max() == pytest.approx(1e6)
    assert (view.steps.tail(1000) == 1).all()  # the newest steps are raw


def test_non_finite_steps_are_counted_not_averaged():
    store = MetricsStore(["a", "b"], POLICIES, window=50, max_buckets=4)
    finite = np.ones(400, bool)
    finite[10:20] = False
    grad = np.ones(400, np.float32)
    grad[10:20] = np.nan
    store.append(rows(1, 400, grad_norm=grad, finite=finite))
    summary = store.summary()
    assert summary["steps"].sum() - summary["finite_steps"].sum() == 10
    assert np.isfinite(summary["grad_norm_max"]).all()
    view, _ = store.view(40)
    assert view.nonfinite.sum() == 10 and np.isfinite(view.grad_norm).all()


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="window=0"):
        MetricsStore(["a"], POLICIES, window=0)


@pytest.mark.parametrize("chunk", [1, 7, 50, 4096, 25_000])
def test_summary_is_the_same_whatever_the_chunk_size(chunk):
    grad = np.random.default_rng(1).lognormal(size=30_000).astype(np.float32)
    reference = MetricsStore(["a", "b"], POLICIES, window=10_000, max_buckets=64)
    reference.append(rows(1, 30_000, grad_norm=grad))
    store = MetricsStore(["a", "b"], POLICIES, window=10_000, max_buckets=64)
    for first in range(1, 30_001, chunk):
        count = min(chunk, 30_001 - first)
        store.append(rows(first, count, grad_norm=grad[first - 1 : first - 1 + count]))
    expected, got = reference.summary(), store.summary()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, err_msg=name)
