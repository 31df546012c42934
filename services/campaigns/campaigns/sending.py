"""Turning a due message into an email or a webhook call: the template context, then the channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from campaigns.channels.email import EmailChannel
from campaigns.channels.webhook import WebhookChannel
from campaigns.delivery import Job
from campaigns.render_process import RENDERER
from campaigns.signing import Signer, unsubscribe_url
from clm_shared.settings import Settings
from clm_shared.transactions import Db

RECOMMENDATIONS = 5


async def recommendations(db: Db, customer_id: str, limit: int = RECOMMENDATIONS) -> list[dict[str, Any]]:
    """Products most often bought by customers who bought what this customer bought (not bought yet);
    the shop's best sellers when nobody shares a purchase with them."""
    rows = await db.fetch(
        """
        WITH mine AS (SELECT product_id FROM purchases WHERE customer_id = $1),
        peers AS (
            SELECT DISTINCT customer_id FROM purchases
            WHERE product_id IN (SELECT product_id FROM mine) AND customer_id <> $1
        )
        SELECT product_id, max(name) AS name, count(*) AS buyers FROM purchases
        WHERE customer_id IN (SELECT customer_id FROM peers) AND product_id NOT IN (SELECT product_id FROM mine)
        GROUP BY product_id ORDER BY buyers DESC, product_id LIMIT $2
        """,
        customer_id,
        limit,
    )
    if not rows:
        rows = await db.fetch(
            "SELECT product_id, max(name) AS name, count(*) AS buyers FROM purchases"
            " WHERE product_id NOT IN (SELECT product_id FROM purchases WHERE customer_id = $1)"
            " GROUP BY product_id ORDER BY buyers DESC, product_id LIMIT $2",
            customer_id,
            limit,
        )
    return [{"product_id": r["product_id"], "name": r["name"] or r["product_id"]} for r in rows]


@dataclass
class ChannelSender:
    """The ``Sender`` of the delivery loop over real SMTP and HTTP."""

    email: EmailChannel
    webhook: WebhookChannel
    signer: Signer
    settings: Settings

    async def context(self, job: Job, db: Db) -> dict[str, Any]:
        traits = dict(job.profile.traits)
        include = set(job.step.include)
        return {
            "customer": {**traits, "id": job.customer_id},
            "traits": traits,
            "event": {
                "name": job.trigger.get("name"),
                "time": job.trigger.get("time"),
                "properties": job.trigger.get("properties") or {},
            },
            "campaign": {"id": job.campaign.id, "name": job.campaign.name},
            "variant": job.variant,
            "unsubscribe_url": unsubscribe_url(
                self.settings, self.signer.unsubscribe_token(job.customer_id, job.campaign.id)
            ),
            "referral_code": self.signer.referral_code(job.customer_id) if "referral_code" in include else None,
            "recommendations": await recommendations(db, job.customer_id) if "recommendations" in include else [],
        }

    async def __call__(self, job: Job, db: Db) -> None:
        context = await self.context(job, db)
        delivery_id = f"clm-{job.message_id}"
        if job.step.channel == "webhook":
            assert job.step.url is not None
            payload = {
                "delivery_id": delivery_id,
                "campaign": context["campaign"],
                "version": job.version,
                "step": job.step.name,
                "variant": job.variant,
                "customer_id": job.customer_id,
                "traits": context["traits"],
                "event": context["event"],
                "referral_code": context["referral_code"],
                "recommendations": context["recommendations"],
            }
            await self.webhook.send(job.step.url, payload, delivery_id=delivery_id)
            return
        template = job.step.template_for(job.variant)
        assert template is not None and job.profile.email is not None
        rendered = await RENDERER.render_email(template, context)
        await self.email.send(
            job.profile.email, rendered, message_id=delivery_id, unsubscribe_url=context["unsubscribe_url"]
        )
