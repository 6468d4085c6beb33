"""Export snapshots: a campaign's judgments written to a file by a worker."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..models import ExportSnapshot

log = logging.getLogger(__name__)


def export_snapshot_request(*, campaign: Any, user: Any) -> ExportSnapshot:
    """Ask a worker (the exports queue) to write the campaign's judgments to a file."""
    import uuid

    from ..tasks.exports import build_export_snapshot

    snapshot = ExportSnapshot.objects.create(
        campaign=campaign, token=uuid.uuid4().hex, requested_by_id=user.pk
    )
    transaction.on_commit(lambda: build_export_snapshot.delay(snapshot.pk))
    return snapshot


def export_snapshot_build(*, snapshot_id: int) -> ExportSnapshot:
    """Write the snapshot's file. Idempotent: a finished snapshot is left as it is, and a
    rerun after a crash starts the file again from nothing."""
    import tempfile

    from django.core.files import File

    from annotation.selectors import export_row_count, judgment_export_lines

    snapshot = ExportSnapshot.objects.select_related("campaign").get(pk=snapshot_id)
    if snapshot.status == ExportSnapshot.Status.DONE:
        return snapshot
    ExportSnapshot.objects.filter(pk=snapshot_id).update(status=ExportSnapshot.Status.RUNNING)
    try:
        count, top = export_row_count(campaign=snapshot.campaign)
        rows = 0
        with tempfile.TemporaryFile() as tmp:
            for line in judgment_export_lines(campaign=snapshot.campaign, up_to_id=top):
                tmp.write(line.encode())
                rows += 1
            if rows != count:
                raise RuntimeError(f"wrote {rows} rows, expected {count}")
            tmp.seek(0)
            if snapshot.file:
                snapshot.file.delete(save=False)
            snapshot.file.save("export.jsonl", File(tmp), save=False)
        snapshot.rows = rows
        snapshot.size = snapshot.file.size
        snapshot.status = ExportSnapshot.Status.DONE
        snapshot.error = ""
    except Exception as exc:
        snapshot.status = ExportSnapshot.Status.FAILED
        snapshot.error = str(exc)[:2000]
        log.exception("export snapshot %s failed", snapshot_id)
    snapshot.finished_at = timezone.now()
    snapshot.save(update_fields=["file", "rows", "size", "status", "error", "finished_at"])
    return snapshot
