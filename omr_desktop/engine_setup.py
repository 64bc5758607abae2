"""Choose the reprocess engine at start-up and when the editor changes it.

The choice is the ``engine`` setting: local threads, or the cluster at a
broker URL. When the cluster cannot be used (no shared database, the
cluster extra missing, the broker unreachable), the reason is returned
with the local engine in its place, so the window can show it.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from omr_desktop import config
from omr_desktop.db.database import Database
from omr_desktop.pipeline.task_manager import LocalEngine, ReprocessEngine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSetup:
    """The engine to use, how to describe it, and why the cluster was not used.

    Attributes:
        fallback_reason: why the cluster setting fell back to local
            threads, or ``None``.
    """

    engine: ReprocessEngine
    description: str
    fallback_reason: str | None = None


def make_engine(
    choice: config.EngineChoice,
    database: Database,
    executor: Executor,
    threads: int,
) -> EngineSetup:
    """Build the engine of ``choice``, or the local one with the reason."""
    local = LocalEngine(database, executor, threads)
    local_text = f"local threads ({threads})"
    if choice.kind != config.ENGINE_CLUSTER:
        return EngineSetup(local, local_text)
    try:
        from omr_desktop.cluster.engine import open_cluster_engine
        from omr_desktop.cluster.settings import (
            BrokerUnavailableError,
            ClusterConfigError,
        )
    except ImportError as exc:
        reason = (
            f"The cluster engine needs the 'cluster' extra ({exc}): "
            "pip install 'omr-desktop[cluster]'."
        )
        return EngineSetup(local, local_text, reason)
    try:
        engine = open_cluster_engine(choice.broker_url, database)
    except (ClusterConfigError, BrokerUnavailableError) as exc:
        logger.warning("Cluster engine unavailable, using local threads: %s", exc)
        return EngineSetup(local, local_text, str(exc))
    logger.info("Reprocess engine: cluster at %s", engine.settings.describe())
    return EngineSetup(engine, f"cluster at {engine.settings.describe()}")


def configured_engine(
    database: Database, executor: Executor, threads: int
) -> EngineSetup:
    """Build the engine of the engine setting, as the commands without a GUI do.

    An invalid engine setting falls back to local threads as an
    unreachable cluster does, with the reason in ``fallback_reason``.
    """
    try:
        choice = config.engine_choice()
    except config.ConfigError as exc:
        local = config.EngineChoice(config.ENGINE_LOCAL, None)
        setup = make_engine(local, database, executor, threads)
        return EngineSetup(setup.engine, setup.description, str(exc))
    return make_engine(choice, database, executor, threads)


def close_engine(engine: ReprocessEngine) -> None:
    """Release what an engine holds (the cluster's Redis connections)."""
    close = getattr(engine, "close", None)
    if callable(close):
        close()


def cluster_event_source(engine: ReprocessEngine) -> Any:
    """Return the HTTP stream's Redis reader for a cluster engine, else None.

    With it, the stream also follows cluster tasks that other processes
    sent, whose events are only in Redis.
    """
    settings = getattr(engine, "settings", None)
    broker_url = getattr(settings, "broker_url", None)
    if broker_url is None:
        return None
    from omr_desktop.cluster.redis_stream import RedisEventSource

    return RedisEventSource(str(broker_url))
