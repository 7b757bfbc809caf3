"""``/webhooks/secret`` (the key's signing secret: read, rotate) and ``/jobs/{id}/webhooks`` (delivery attempts)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import OwnedJob, OwnerDep, WebhooksDep
from common.schemas import WebhookAttempt, WebhookAttemptList, WebhookSecret

router = APIRouter(tags=["webhooks"])


@router.get("/webhooks/secret", response_model=WebhookSecret, summary="The key's webhook signing secret",
            description="`whsec_` + base64 of the HMAC-SHA256 key that signs this key's deliveries (Standard "
                        "Webhooks: `webhook-signature` = `v1,` + base64 of the HMAC of `id.timestamp.body`); "
                        "made on first use. Verify with `client.webhooks.verify`.")
def webhook_secret(owner: OwnerDep, hooks: WebhooksDep):
    return WebhookSecret(secret=hooks.secret(owner))


@router.post("/webhooks/secret/rotate", response_model=WebhookSecret, summary="Rotate the webhook signing secret",
             description="A new secret; every delivery attempt from now on is signed with it.")
def rotate_webhook_secret(owner: OwnerDep, hooks: WebhooksDep):
    return WebhookSecret(secret=hooks.rotate_secret(owner))


@router.get("/jobs/{job_id}/webhooks", response_model=WebhookAttemptList, tags=["jobs"],
            summary="A job's webhook delivery attempts",
            description="Oldest first: the event, the receiver's status code, the time, the error (none when "
                        "delivered); an event's retries share its `webhook_id`.")
def job_webhooks(job: OwnedJob, hooks: WebhooksDep):
    return WebhookAttemptList(items=[WebhookAttempt.model_validate(a) for a in hooks.attempts(job.id)])
