"""The Celery app (`app`): broker and results on Redis, late acks, one task at a time per child.

Configured from `REDIS_URL` (and `NOMINAL_*`, see `app/config.py`) the first
time Celery needs its configuration, so `celery -A workers.celery_app worker`
works as well as `nominal worker`; `configure(config)` applies a `Config` built
elsewhere (CLI options) before that.

Delivery policy, for tasks that must survive a worker dying:

- `task_acks_late` + `task_reject_on_worker_lost`: a task is acknowledged when it
  ends, so a worker killed mid-task leaves it in Redis to be delivered again.
  Safe because tasks are idempotent: point ids come from image content, so a
  batch done twice overwrites its points.
- `worker_prefetch_multiplier=1`: a worker holds no more tasks than it runs, so
  a dead worker strands at most those.
- `visibility_timeout` (default 300 s, `NOMINAL_VISIBILITY_TIMEOUT`): how long an
  unacknowledged task waits before Redis hands it to another worker (Celery's
  default is an hour). It must exceed the longest task, or a slow task is run
  twice: batch tasks take seconds. Live workers sweep for such tasks every
  tenth of it (at most every 10 s); a worker killed mid-sweep holds the others'
  sweeps back for at most one visibility timeout.

Queues: `embed` takes the batch tasks (the forward pass: point GPU workers at it
with `nominal worker --queues embed`), `nominal` the rest.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from deployment.config import Config, get_config

EMBED_QUEUE = "embed"
DEFAULT_QUEUE = "nominal"
QUEUES: tuple[str, ...] = (EMBED_QUEUE, DEFAULT_QUEUE)

app = Celery("nominal", include=["workers.tasks"])

# The Config this process runs with: set by `configure`, or read from the environment on first use.
_config: Config | None = None


def celery_settings(config: Config) -> dict[str, Any]:
    """Celery settings for a deployment; raises nothing, so an app without Redis can still be imported."""
    sweep_s = max(1, min(10, config.visibility_timeout // 10))
    transport = {
        "visibility_timeout": config.visibility_timeout,
        "unacked_restore_interval": sweep_s,
        "unacked_restore_throttle": 1,
        # A worker killed while it sweeps keeps the sweep's lock until this expires (kombu: 300 s),
        # holding back every redelivery: no longer than one visibility timeout.
        "unacked_mutex_expire": config.visibility_timeout,
        "global_keyprefix": config.redis_prefix,
    }
    return {
        "broker_url": config.redis_url,
        "result_backend": config.redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"global_keyprefix": config.redis_prefix},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": DEFAULT_QUEUE,
        # Declared, so a worker started without --queues (celery -A workers.celery_app worker) takes both.
        "task_queues": [Queue(name) for name in QUEUES],
        "task_routes": {"nominal.embed_batch": {"queue": EMBED_QUEUE}, "nominal.index_batch": {"queue": EMBED_QUEUE}},
        "result_expires": 24 * 3600,
        "worker_hijack_root_logger": False,
    }


def make_app(config: Config) -> Celery:
    """A fresh Celery app for sending tasks with `config` (the runner's), apart from the worker's `app`.

    Tasks are sent by name, so it needs none registered; being separate, its
    connection pools never carry another configuration's broker or key prefix.
    """
    client = Celery("nominal", set_as_current=False)
    client.conf.update(celery_settings(config))
    return client


def configure(config: Config) -> Celery:
    """Use `config` for this process's worker app (and the worker processes it forks)."""
    global _config
    _config = config
    app.conf.update(celery_settings(config))
    return app


def current_config() -> Config:
    return _config if _config is not None else get_config()


@app.on_configure.connect
def _configure_from_environment(sender: Celery, **kwargs: Any) -> None:
    if _config is None and get_config().redis_url:
        sender.conf.update(celery_settings(get_config()))
