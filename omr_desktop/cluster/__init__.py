"""The cluster engine: reprocess tasks as Celery tasks over Redis.

Needs the ``cluster`` extra (Celery and redis-py). No Qt here.
"""
