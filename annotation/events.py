"""What the annotation app announces to the rest of the project, without importing it.

The annotation app knows nothing of what is computed from judgments: the labeling app
subscribes (labeling/apps.py). So the dependency runs one way, labeling -> annotation."""

from __future__ import annotations

import logging

from django.dispatch import Signal

log = logging.getLogger(__name__)

# Sent after a transaction that stored judgments of a campaign has committed, with
# `campaign_id`. Receivers must be quick (they run in the request) and never raise into it.
judgments_committed = Signal()


def judgments_committed_send(*, campaign_id: int) -> None:
    """Tell every receiver; a receiver's error is logged, never raised: the judgment stands."""
    for receiver, result in judgments_committed.send_robust(sender=None, campaign_id=campaign_id):
        if isinstance(result, Exception):
            log.error(
                "receiver %r of judgments_committed failed for campaign %s: %s",
                receiver,
                campaign_id,
                result,
            )
