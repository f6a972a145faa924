"""The demo's workflows: quick emails and slow media jobs, in separate groups."""
from __future__ import annotations

import asyncio
import hashlib
import time

from shoal import workflow


@workflow("send-email", worker="email")
def send_email(payload, step):
    """A fast job: pretend to render and send an email."""
    body = f"Hello {payload['to']}, your order #{payload['order']} has shipped."
    return {"to": payload["to"], "bytes": len(body)}


@workflow("resize-image", worker="media")
def resize_image(payload, step):
    """A slow job: a second of work per image. It never delays an email."""
    time.sleep(payload.get("seconds", 1.0))
    digest = hashlib.sha256(payload["key"].encode()).hexdigest()[:12]
    return {"key": payload["key"], "thumb": f"thumbs/{digest}.png"}


@workflow("notify", worker="email")
async def notify(payload, step):
    """An async job: runs on the email worker's event loop."""
    await asyncio.sleep(0.05)
    return {"notified": payload["user"]}
