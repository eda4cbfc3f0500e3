"""Admin form: train a model now, by queueing the training for the worker."""

from __future__ import annotations

import logging
from dataclasses import replace

from arq import create_pool
from arq.connections import RedisSettings
from piccolo_admin.endpoints import FormConfig
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.requests import Request

from server.settings import get_settings

log = logging.getLogger("leadkiln.admin")

TRAIN_JOB = "train_model"
TRAIN_JOB_ID = "train-a-model-now"
"""One id for every click: while a training queued here waits or runs, another click adds
nothing (the worker keeps no result for it, so the id is free again once it finishes)."""


class TrainNow(BaseModel):
    """Nothing to fill in: the training reads every outcome recorded so far."""


async def queue_training() -> bool:
    """Queue one training for the worker; False when one is already queued or running."""
    url = get_settings().redis_url
    if not url:
        raise ValueError("No Redis is configured (REDIS_URL), so no worker can train: run `leadkiln train`.")
    try:
        # A pool for this one click: piccolo-admin is a Starlette app and cannot reach the Litestar
        # app's pool, and training is queued a few times a week at most.
        pool = await create_pool(replace(RedisSettings.from_dsn(url), conn_retries=1))
    except (OSError, RedisError) as exc:
        raise ValueError(f"The worker's Redis cannot be reached ({type(exc).__name__}): try again later.") from None
    try:
        job = await pool.enqueue_job(TRAIN_JOB, _job_id=TRAIN_JOB_ID)
    finally:
        await pool.aclose()
    return job is not None


async def train_now(request: Request, data: TrainNow) -> str:
    queued = await queue_training()
    who = getattr(getattr(request, "user", None), "display_name", "staff")
    if not queued:
        return ("A training is already queued or running: the Scoring page shows the new version "
                "(or why none was trained) when it finishes.")
    log.info("training queued in the admin by %s", who)
    return ("Queued: the Scoring page shows the new version when it finishes "
            "(or why none was trained, e.g. too few labels).")


TRAIN_FORM = FormConfig(name="Train a model now", pydantic_model=TrainNow, endpoint=train_now,
                        description="Queues a training for the worker on the outcomes sales recorded so far "
                                    "(LightGBM and the logistic baseline, validated the same way); "
                                    "the new version is promoted only if it does at least as well.",
                        form_group="Scoring")
