"""Importing RL datasets: field files under DATASETS_ROOT plus a Dataset row and its episodes.

All or nothing: the files are written into a temporary directory under DATASETS_ROOT, every
value is checked (annotation/dataset_io.py), then the directory is renamed into place and the
rows are created in one transaction. Any failure removes the temporary and the final
directory, so a rejected import leaves neither rows nor files.
"""

from __future__ import annotations

import shutil
import tempfile
import unicodedata
import uuid
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from .. import dataset_io
from ..errors import Conflict, ServiceError
from ..models import Dataset, Episode

NAME_MAX = 200


def dataset_name_clean(*, name: str) -> str:
    """The name as stored: whitespace runs folded to one space, no control characters. The
    name is only a label; the directory is a uuid, never derived from it."""
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ServiceError("A dataset needs a name.", field="name")
    if len(cleaned) > NAME_MAX:
        raise ServiceError(f"The name is over {NAME_MAX} characters.", field="name")
    if any(unicodedata.category(ch).startswith("C") for ch in cleaned):
        raise ServiceError("The name holds control characters.", field="name")
    return cleaned


def dataset_import(*, path: Path, source_format: str, name: str, env_id: str = "") -> Dataset:
    """Import the file at `path` as a new dataset named `name`.

    Call outside any transaction you may roll back: the files are moved into place before
    this function's own transaction commits, and only its own failures remove them.
    Raises ServiceError (bad input, naming the field and row) or Conflict (the name is taken).
    """
    name = dataset_name_clean(name=name)
    env_id = " ".join(env_id.split())
    if len(env_id) > NAME_MAX:
        raise ServiceError(f"The environment id is over {NAME_MAX} characters.", field="env")
    if Dataset.objects.filter(name=name).exists():
        raise Conflict(f"A dataset named {name!r} exists already.", field="name")
    root = Path(settings.DATASETS_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    directory = uuid.uuid4().hex
    final = root / directory
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    try:
        try:
            summary = dataset_io.dataset_convert(
                source=Path(path),
                fmt=source_format,
                dest=staging,
                max_bytes=settings.DATASET_MAX_BYTES,
            )
        except dataset_io.DatasetError as exc:
            raise ServiceError(str(exc), field="file") from exc
        with transaction.atomic():
            dataset = Dataset.objects.create(
                name=name,
                source_format=source_format,
                env_id=env_id,
                observation_space=summary.observation_space,
                action_space=summary.action_space,
                fields=summary.fields,
                transition_count=summary.transitions,
                episode_count=len(summary.episodes),
                directory=directory,
            )
            Episode.objects.bulk_create(
                (
                    Episode(
                        dataset=dataset,
                        index=span.index,
                        start=span.start,
                        length=span.length,
                        terminated=span.terminated,
                        truncated=span.truncated,
                    )
                    for span in summary.episodes
                ),
                batch_size=5000,
            )
            staging.rename(final)
    except IntegrityError as exc:  # a concurrent import took the name first
        shutil.rmtree(final, ignore_errors=True)
        raise Conflict(f"A dataset named {name!r} exists already.", field="name") from exc
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataset
