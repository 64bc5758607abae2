"""The Celery application of the cluster: broker and result backend on Redis.

``make_celery`` builds it from ``ClusterSettings``. For ``celery -A
omr_desktop.cluster.celery_app worker``, the module attribute ``app`` is
built on first access from ``OMR_BROKER_URL``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from omr_desktop.cluster.redis_events import KEY_TTL_S
from omr_desktop.cluster.settings import ClusterSettings, settings_from_env


def make_celery(settings: ClusterSettings) -> Celery:
    """Build the Celery application for ``settings``, with the tasks registered."""
    app = Celery("omr_desktop", broker=settings.broker_url, backend=settings.broker_url)
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        # Sweep for the tasks of dead workers at this interval, on every
        # sweep (kombu's default scans on every tenth).
        "unacked_restore_interval": settings.restore_interval_s,
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        # A task is acknowledged when it ends, not when a worker takes it,
        # so the task of a worker that dies is delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One task at a time per worker slot: a prefetched chunk would wait
        # behind the running one instead of going to an idle worker.
        worker_prefetch_multiplier=1,
        task_track_started=True,
        broker_transport_options=transport,
        result_backend_transport_options={
            "visibility_timeout": settings.visibility_timeout_s
        },
        result_expires=KEY_TTL_S,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    # Importing the module registers its shared tasks with every app.
    import omr_desktop.cluster.tasks  # noqa: F401

    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        app = make_celery(settings_from_env())
        globals()["app"] = app
        return app
    raise AttributeError(name)
