"""Cluster settings: the broker URL, the visibility timeout, and their checks.

Values come from the environment, so that a worker started by a service
manager and the application that sends it tasks read the same ones:

==================================  =========================================
variable                            meaning
==================================  =========================================
``OMR_BROKER_URL``                  Redis URL of the broker and result backend
``OMR_CLUSTER_VISIBILITY_TIMEOUT``  seconds before an unacknowledged task is
                                    delivered again (default 600)
``OMR_CLUSTER_PROGRESS_TIMEOUT``    seconds without any event after which the
                                    application fails a task it sent
                                    (default twice the visibility timeout)
==================================  =========================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

BROKER_VARIABLE = "OMR_BROKER_URL"
VISIBILITY_VARIABLE = "OMR_CLUSTER_VISIBILITY_TIMEOUT"
PROGRESS_VARIABLE = "OMR_CLUSTER_PROGRESS_TIMEOUT"

# A task that a dead worker had taken is delivered again after this long,
# so it must exceed the longest task: the final step of a 100,000-sheet
# task (14 batches of 7,109) takes about 14 x 20 s on the benchmark
# machine. A shorter value delivers a running final step a second time,
# which then waits on the first one's lock and does nothing.
DEFAULT_VISIBILITY_TIMEOUT_S = 600

# The visibility timeout must exceed the longest task step, and a chunk
# whose worker died comes back after it, so a running task stays silent
# for less than that timeout. Twice that timeout without any event is
# taken to mean that no worker runs the task: none is running, or Redis
# lost the queued message.
# NOTE: a task queued behind other tasks on busy workers publishes no
# event while it waits, so a long queue can exceed this limit too.
PROGRESS_TIMEOUT_FACTOR = 2.0

# Seconds a broker check waits for Redis to respond.
CONNECT_TIMEOUT_S = 3.0


class ClusterConfigError(ValueError):
    """A cluster setting is missing or invalid; the message names it."""


class BrokerUnavailableError(RuntimeError):
    """The broker cannot be reached; the message names it and the cause."""


@dataclass(frozen=True)
class ClusterSettings:
    """Where the cluster's broker is and how its deliveries behave.

    Attributes:
        broker_url: ``redis://`` or ``rediss://`` URL; the result backend
            and the progress events use the same Redis.
        visibility_timeout_s: seconds before a task taken by a worker that
            did not acknowledge it is delivered to another worker.
        restore_interval_s: seconds between a worker's sweeps for such tasks.
        progress_timeout_s: seconds without any event of a task after which
            the application that sent it marks it FAILURE; ``None`` for
            ``PROGRESS_TIMEOUT_FACTOR`` times the visibility timeout.
    """

    broker_url: str
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S
    restore_interval_s: float = 10.0
    progress_timeout_s: float | None = None

    @property
    def progress_limit_s(self) -> float:
        """The progress timeout in seconds, with the default applied."""
        if self.progress_timeout_s is not None:
            return self.progress_timeout_s
        return PROGRESS_TIMEOUT_FACTOR * self.visibility_timeout_s

    def describe(self) -> str:
        return safe_broker_url(self.broker_url)


def settings_from_env(broker_url: str | None = None) -> ClusterSettings:
    """Build the settings from ``broker_url`` or ``OMR_BROKER_URL``.

    Raises:
        ClusterConfigError: no broker URL, or an invalid value.
    """
    url = (broker_url or os.environ.get(BROKER_VARIABLE, "")).strip()
    if not url:
        raise ClusterConfigError(
            f"No broker URL: set {BROKER_VARIABLE} (or --broker) to the Redis "
            "URL of the cluster, such as redis://10.0.0.5:6379/0."
        )
    check_broker_url(url)
    timeout_s = _seconds(VISIBILITY_VARIABLE) or DEFAULT_VISIBILITY_TIMEOUT_S
    # Sweep often enough that a short timeout (as in tests) is honoured.
    interval_s = max(0.5, min(10.0, timeout_s / 3))
    return ClusterSettings(url, timeout_s, interval_s, _seconds(PROGRESS_VARIABLE))


def check_broker_url(url: str) -> None:
    """Raise ClusterConfigError unless ``url`` is a Redis URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ClusterConfigError(
            f"Invalid broker URL {safe_broker_url(url)!r}: write "
            "redis://HOST:PORT/DB, such as redis://127.0.0.1:6379/0."
        )


def _seconds(variable: str) -> float | None:
    """Return the positive number of seconds in ``variable``, None if unset."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ClusterConfigError(
            f"{variable}={text!r} is not a positive number of seconds."
        )
    return value


def safe_broker_url(url: str) -> str:
    """Return ``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    netloc = f"{user}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def check_broker(settings: ClusterSettings) -> None:
    """Ping the broker once.

    Raises:
        BrokerUnavailableError: Redis does not respond within
            ``CONNECT_TIMEOUT_S``, or rejects the connection.
    """
    import redis

    client = redis.Redis.from_url(
        settings.broker_url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=CONNECT_TIMEOUT_S,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        # redis-py's messages end with a full stop, as in "Error 111
        # connecting to 127.0.0.1:6379. Connection refused."
        cause = str(exc).rstrip(". ")
        raise BrokerUnavailableError(
            f"The cluster's broker at {settings.describe()} is unreachable: {cause}."
        ) from exc
    finally:
        client.close()
