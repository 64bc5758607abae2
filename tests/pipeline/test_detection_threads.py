"""The detection pool's scheduling: one thread under SCHED_IDLE unless turned off."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import Executor

import pytest

from omr_desktop.config import ConfigError, detection_priority
from omr_desktop.pipeline.detection_threads import DetectionPriority, detection_pool

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's"
)

# Seconds the pool's threads may take to meet; far more than they need.
TIMEOUT_S = 30


def policies_of_threads(executor: Executor, workers: int) -> dict[int, int]:
    """Return each pool thread's scheduling policy, by native thread id.

    Every job waits until all ``workers`` jobs run, so each runs on its own
    thread.
    """
    barrier = threading.Barrier(workers, timeout=TIMEOUT_S)

    def policy() -> tuple[int, int]:
        barrier.wait()
        return threading.get_native_id(), os.sched_getscheduler(0)

    futures = [executor.submit(policy) for _ in range(workers)]
    return dict(f.result(timeout=TIMEOUT_S) for f in futures)


@linux_only
def test_pool_puts_one_thread_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMR_DETECTION_PRIORITY", raising=False)

    with detection_pool(3) as pool:
        policies = policies_of_threads(pool, 3)

    assert len(policies) == 3
    assert sorted(policies.values()) == sorted(
        [os.SCHED_IDLE, os.SCHED_OTHER, os.SCHED_OTHER]
    )


@linux_only
def test_pool_keeps_idle_thread_across_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMR_DETECTION_PRIORITY", raising=False)

    with detection_pool(2) as pool:
        first = policies_of_threads(pool, 2)
        second = policies_of_threads(pool, 2)

    assert first == second
    assert list(first.values()).count(os.SCHED_IDLE) == 1


@linux_only
def test_normal_priority_puts_none_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMR_DETECTION_PRIORITY", "Normal")

    with detection_pool(2) as pool:
        policies = policies_of_threads(pool, 2)

    assert list(policies.values()) == [os.SCHED_OTHER, os.SCHED_OTHER]


def test_invalid_priority_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMR_DETECTION_PRIORITY", "realtime")

    with pytest.raises(ConfigError, match="Invalid OMR_DETECTION_PRIORITY 'realtime'"):
        detection_priority()


def test_invalid_priority_falls_back_to_idle(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OMR_DETECTION_PRIORITY", "realtime")

    with caplog.at_level("WARNING", logger="omr_desktop.pipeline.detection_threads"):
        priority = DetectionPriority()

    assert priority.priority == "idle"
    assert "Invalid OMR_DETECTION_PRIORITY 'realtime'" in caplog.text
    assert "Using 'idle'" in caplog.text


@linux_only
def test_refused_policy_keeps_priority(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As in a container whose seccomp profile rejects sched_setscheduler.
    def reject(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", reject)
    priority = DetectionPriority("idle")
    policies: list[int] = []

    def apply() -> None:
        priority.apply()
        policies.append(os.sched_getscheduler(0))

    with caplog.at_level("DEBUG", logger="omr_desktop.pipeline.detection_threads"):
        thread = threading.Thread(target=apply)
        thread.start()
        thread.join(TIMEOUT_S)

    assert policies == [os.SCHED_OTHER]
    assert priority.idle_thread is None
    assert "Detection thread kept its priority" in caplog.text
