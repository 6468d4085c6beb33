"""Bulk imports of prompts, items and pairs (staff).

Each import validates every row before it writes any, and writes all rows in one
transaction: a bad row is named (rows[i].field) and nothing is stored. A row that exists
already — stored before, or by a concurrent import that won the race to the unique
constraint — is a 409 (Conflict), named the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q

from ..errors import Conflict, ServiceError, shown, text_check
from ..models import Campaign, Item, Pair, Prompt, pairs_prepare

# Item.start and Item.length are PositiveIntegerField: a 32-bit signed column.
FRAME_MAX = 2**31 - 1


def _rows_check(rows: Any) -> list[dict[str, Any]]:
    if not isinstance(rows, list):
        raise ServiceError("Expected a JSON list of rows.", field="rows")
    if len(rows) > settings.IMPORT_MAX_ROWS:
        raise ServiceError(
            f"{len(rows)} rows in one request; the limit is {settings.IMPORT_MAX_ROWS}.",
            field="rows",
        )
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ServiceError("Each row must be a JSON object.", field=f"rows[{index}]")
    return rows


def _optional_str(row: dict[str, Any], key: str, where: str, max_length: int = 200) -> str:
    value = row.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ServiceError(f"{key} must be a string.", field=f"{where}.{key}")
    if len(value) > max_length:
        raise ServiceError(f"{key} is longer than {max_length} characters.", field=f"{where}.{key}")
    return text_check(value, field=f"{where}.{key}")


def _json_text_check(value: Any, *, field: str) -> None:
    """Every string (key or value) of a JSON value, as text_check; iterative, so no nesting
    depth exhausts the stack."""
    stack = [(value, field)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            text_check(node, field=where)
        elif isinstance(node, dict):
            for key, child in node.items():
                text_check(str(key), field=f"{where} (a key)")
                stack.append((child, f"{where}.{key}"))
        elif isinstance(node, list):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(node))


def _metadata(row: dict[str, Any], where: str) -> dict[str, Any]:
    value = row.get("metadata", {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ServiceError("metadata must be a JSON object.", field=f"{where}.metadata")
    _json_text_check(value, field=f"{where}.metadata")
    return value


def messages_normalise(value: Any, *, where: str) -> list[dict[str, str]]:
    """A prompt is a list of chat messages; a plain string becomes one user message."""
    if isinstance(value, str):
        if not value.strip():
            raise ServiceError("The prompt is empty.", field=where)
        return [{"role": "user", "content": text_check(value, field=where)}]
    if not isinstance(value, list) or not value:
        raise ServiceError("messages must be a non-empty list or a string.", field=where)
    out = []
    for index, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise ServiceError(
                'Each message needs a string "role" and a string "content".',
                field=f"{where}[{index}]",
            )
        if message["role"] not in ("system", "user", "assistant", "tool"):
            raise ServiceError(
                f"Unknown role '{shown(message['role'])}'; use system, user, assistant or tool.",
                field=f"{where}[{index}].role",
            )
        content = text_check(message["content"], field=f"{where}[{index}].content")
        out.append({"role": message["role"], "content": content})
    return out


def _unique_external_ids(model: Any, campaign: Campaign, objs: list[Any], label: str) -> None:
    seen: dict[str, int] = {}
    for index, obj in enumerate(objs):
        if obj.external_id:
            if obj.external_id in seen:
                raise ServiceError(
                    f"external_id '{obj.external_id}' repeats row {seen[obj.external_id]}.",
                    field=f"rows[{index}].external_id",
                )
            seen[obj.external_id] = index
    taken = set(
        model.objects.filter(campaign=campaign, external_id__in=list(seen)).values_list(
            "external_id", flat=True
        )
    )
    for ext in taken:
        raise Conflict(
            f"A {label} with external_id '{ext}' already exists in this campaign.",
            field=f"rows[{seen[ext]}].external_id",
        )


def _check_refs(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    """References are an id (integer) or an external_id (string); anything else is named."""
    for index, row in enumerate(rows):
        for key in keys:
            ref = row.get(key)
            if ref is not None and (isinstance(ref, bool) or not isinstance(ref, int | str)):
                raise ServiceError(
                    f"{key} must be an id (integer) or an external_id (string).",
                    field=f"rows[{index}].{key}",
                )
            if isinstance(ref, str):
                text_check(ref, field=f"rows[{index}].{key}")


def _resolver(model: Any, campaign: Campaign, refs: list[Any]) -> dict[Any, Any]:
    """Map the ids and external ids used in a request to (pk, prompt_id) of the campaign's rows."""
    ids = [r for r in refs if isinstance(r, int) and not isinstance(r, bool)]
    exts = [r for r in refs if isinstance(r, str)]
    fields = ["id", "external_id"] + (["prompt_id"] if model.__name__ == "Item" else [])
    found: dict[Any, Any] = {}
    for row in model.objects.filter(
        Q(campaign=campaign) & (Q(id__in=ids) | Q(external_id__in=exts))
    ).values(*fields):
        found[row["id"]] = row
        if row["external_id"]:
            found[row["external_id"]] = row
    return found


def prompts_bulk_create(*, campaign: Campaign, rows: Any) -> list[Any]:
    rows = _rows_check(rows)
    objs = []
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        if "messages" in row:
            messages = messages_normalise(row["messages"], where=f"{where}.messages")
        elif "prompt" in row:
            messages = messages_normalise(row["prompt"], where=f"{where}.prompt")
        else:
            raise ServiceError('A prompt row needs "messages" (or a "prompt" string).', field=where)
        objs.append(
            Prompt(
                campaign=campaign,
                external_id=_optional_str(row, "external_id", where),
                messages=messages,
                metadata=_metadata(row, where),
            )
        )
    _unique_external_ids(Prompt, campaign, objs, "prompt")
    return _insert(Prompt, objs, lambda: _unique_external_ids(Prompt, campaign, objs, "prompt"))


def items_bulk_create(*, campaign: Campaign, rows: Any) -> list[Any]:
    rows = _rows_check(rows)
    is_text = campaign.kind == Campaign.Kind.TEXT
    _check_refs(rows, ("prompt",))
    prompts = _resolver(Prompt, campaign, [r.get("prompt") for r in rows]) if is_text else {}
    objs = []
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        item = Item(
            campaign=campaign,
            external_id=_optional_str(row, "external_id", where),
            source=_optional_str(row, "source", where) or _optional_str(row, "model", where),
            metadata=_metadata(row, where),
        )
        if is_text:
            ref = row.get("prompt")
            if ref is None:
                raise ServiceError(
                    "A text item needs the prompt it answers.", field=f"{where}.prompt"
                )
            if ref not in prompts:
                raise ServiceError(f"No prompt {ref!r} in this campaign.", field=f"{where}.prompt")
            content = row.get("content")
            if not isinstance(content, str) or not content.strip():
                raise ServiceError("content must be a non-empty string.", field=f"{where}.content")
            item.prompt_id = prompts[ref]["id"]
            item.content = text_check(content, field=f"{where}.content")
        else:
            item.dataset = _optional_str(row, "dataset", where)
            item.episode = _optional_str(row, "episode", where)
            for key in ("start", "length"):
                value = row.get(key)
                if (
                    not isinstance(value, int)
                    or isinstance(value, bool)
                    or not 0 <= value <= FRAME_MAX
                ):
                    raise ServiceError(
                        f"{key} must be an integer from 0 to {FRAME_MAX}.", field=f"{where}.{key}"
                    )
                setattr(item, key, value)
            if not item.length:
                raise ServiceError("length must be positive.", field=f"{where}.length")
        objs.append(item)
    _unique_external_ids(Item, campaign, objs, "item")
    return _insert(Item, objs, lambda: _unique_external_ids(Item, campaign, objs, "item"))


def pairs_bulk_create(*, campaign: Campaign, rows: Any) -> list[Pair]:
    rows = _rows_check(rows)
    _check_refs(rows, ("item_a", "item_b"))
    refs = [r.get(key) for r in rows for key in ("item_a", "item_b")]
    items = _resolver(Item, campaign, refs)
    objs = []
    seen: dict[tuple[int, int], int] = {}
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        resolved = []
        for key in ("item_a", "item_b"):
            ref = row.get(key)
            if ref is None:
                raise ServiceError(
                    f"{key} is required (an item id or external_id).", field=f"{where}.{key}"
                )
            if ref not in items:
                raise ServiceError(f"No item {ref!r} in this campaign.", field=f"{where}.{key}")
            resolved.append(items[ref])
        first, second = sorted(resolved, key=lambda r: r["id"])
        if first["id"] == second["id"]:
            raise ServiceError("A pair needs two different items.", field=where)
        if campaign.kind == Campaign.Kind.TEXT and first["prompt_id"] != second["prompt_id"]:
            raise ServiceError(
                "Both items of a text pair must answer the same prompt.", field=where
            )
        pair_key = (first["id"], second["id"])
        if pair_key in seen:
            raise ServiceError(f"The same pair as row {seen[pair_key]}.", field=where)
        seen[pair_key] = index
        objs.append(Pair(campaign=campaign, item_a_id=pair_key[0], item_b_id=pair_key[1]))
    _pairs_new(campaign, seen)
    return _insert(Pair, pairs_prepare(objs), lambda: _pairs_new(campaign, seen))


def _pairs_new(campaign: Campaign, seen: dict[tuple[int, int], int]) -> None:
    existing = Pair.objects.filter(
        campaign=campaign, item_a_id__in=[k[0] for k in seen], item_b_id__in=[k[1] for k in seen]
    ).values_list("item_a_id", "item_b_id")
    for key in existing:
        if key in seen:
            raise Conflict("This pair already exists in the campaign.", field=f"rows[{seen[key]}]")


def _insert(model: Any, objs: list[Any], recheck: Callable[[], None]) -> list[Any]:
    """Insert all rows in one transaction. The rows were checked against stored ones, but a
    concurrent import may commit the same key between that check and this insert; its unique
    constraint then refuses ours (after waiting for it to commit), and `recheck` names the
    row as a Conflict."""
    try:
        with transaction.atomic():
            return model.objects.bulk_create(objs, batch_size=1000)
    except IntegrityError:
        recheck()
        raise
