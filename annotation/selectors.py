"""Every non-trivial read of the annotation app."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import astuple, dataclass
from datetime import timedelta
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import connection, connections, transaction
from django.db.models import Count, F, Max, Min, Q, QuerySet
from django.db.models.functions import Now
from psycopg.adapt import Loader

from feedback_app.process_cache import ProcessCache

from . import permissions
from .models import (
    Assignment,
    Campaign,
    ClipStatus,
    Criterion,
    Dataset,
    Episode,
    Item,
    Judgment,
    Pair,
    Prompt,
    Skip,
    choices_as_shown,
)
from .pair_order import pair_order_for

# Rows per keyset page of an export at most (see EXPORT_PAGE_BYTES for PostgreSQL).
EXPORT_PAGE = 50000


_jsonl = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _pseudonyms() -> dict[int, str]:
    """A per-export cache: the HMAC once per annotator, not once per row."""

    class Cache(dict[int, str]):
        def __missing__(self, user_id: int) -> str:
            self[user_id] = annotator_pseudonym(user_id)
            return self[user_id]

    return Cache()


def annotator_pseudonym(user_id: int) -> str:
    """A stable id for an annotator that names nobody outside this deployment."""
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"annotator:{user_id}".encode(), hashlib.sha256
    ).hexdigest()
    return f"ann_{digest[:16]}"


# How old the cached pair and judgment totals of a campaign may be (see campaign_totals).
CAMPAIGN_TOTALS_SECONDS = 30


@dataclass(frozen=True)
class CampaignTotals:
    pairs: int
    judgments: int  # every annotator's, whatever their status


@dataclass(frozen=True)
class CampaignListRow:
    campaign: Campaign
    totals: CampaignTotals
    mine: int  # the viewer's own judgments


def _totals_key(campaign: Campaign) -> str:
    # With the creation time: ids start again in a rebuilt database (a restore, the tests),
    # and a cached total must never be read as another campaign's.
    return f"campaign-totals:{campaign.pk}:{campaign.created_at.timestamp()}"


def campaign_totals(*, campaigns: Sequence[Campaign]) -> dict[int, CampaignTotals]:
    """Pairs and judgments of each campaign, by campaign id, at most CAMPAIGN_TOTALS_SECONDS
    old: from the cache, and for the campaigns it lacks one grouped count per table.

    Counting is the one read here that grows with a campaign (index-only, but over every
    pair), so a list page does it at most once per campaign per period instead of on every
    load. A total is stale only until the entry expires: pairs come in by import and leave
    only unjudged by a delete, judgments come in one by one, and nothing decides on these
    numbers -- the lease engine counts what it needs itself."""
    keys = {_totals_key(c): c.pk for c in campaigns}
    cached = cache.get_many(list(keys))
    totals = {keys[key]: CampaignTotals(*value) for key, value in cached.items()}
    missing = [pk for key, pk in keys.items() if key not in cached]
    if not missing:
        return totals

    def counts(model: type[Pair] | type[Judgment]) -> dict[int, int]:
        rows = model.objects.filter(campaign_id__in=missing).values("campaign_id")
        return dict(rows.annotate(n=Count("*")).values_list("campaign_id", "n"))

    pairs, judgments = counts(Pair), counts(Judgment)
    fresh = {
        pk: CampaignTotals(pairs=pairs.get(pk, 0), judgments=judgments.get(pk, 0)) for pk in missing
    }
    if CAMPAIGN_TOTALS_SECONDS > 0:
        cache.set_many(
            {key: astuple(fresh[pk]) for key, pk in keys.items() if pk in fresh},
            timeout=CAMPAIGN_TOTALS_SECONDS,
        )
    return totals | fresh


def campaign_list_for(*, user: AbstractBaseUser) -> list[CampaignListRow]:
    """Campaigns the user may see (campaigns_visible_to), each with its totals
    (campaign_totals, cached) and the user's own judgment count (exact: an index-only count
    of this user's judgments alone, so it grows with their work, not with the campaign)."""
    campaigns = list(campaigns_visible_to(user=user))
    totals = campaign_totals(campaigns=campaigns)
    mine = dict(
        Judgment.objects.filter(annotator_id=user.pk)
        .values("campaign_id")
        .annotate(n=Count("*"))
        .values_list("campaign_id", "n")
    )
    return [
        CampaignListRow(campaign=c, totals=totals[c.pk], mine=mine.get(c.pk, 0)) for c in campaigns
    ]


def campaigns_visible_to(*, user: AbstractBaseUser) -> QuerySet[Campaign]:
    """The campaigns the user annotates in or has a role in (all, for superusers)."""
    return permissions.campaigns_for(user=user, need=permissions.Need.VIEW).order_by("name")


def campaign_for(
    *, user: AbstractBaseUser, slug: str, need: permissions.Need | str = "view"
) -> Campaign | None:
    """The campaign, if the user may act on it at level `need` (annotation/permissions.py)."""
    return (
        permissions.campaigns_for(user=user, need=need).filter(slug=slug).first() if slug else None
    )


POSTER_SUFFIX = ".jpg"


def clip_item_for(*, user: AbstractBaseUser, name: str) -> Item | None:
    """The item whose clip (or poster frame) is stored under `name`, if `user` may see it: a
    member of the item's campaign or one with a role in it."""
    # An index scan on item_clip, run on every request of a video (each Range request too).
    # Not .first(): its ORDER BY id could walk the primary key instead.
    if name.endswith(POSTER_SUFFIX):
        # A rendered clip's poster is stored beside it (services/clips.py): found through
        # the clip's index, and served only if it is that item's poster.
        lookup = {"clip": name.removesuffix(POSTER_SUFFIX) + ".mp4", "poster": name}
    else:
        lookup = {"clip": name}
    qs = Item.objects.filter(**lookup).filter(
        permissions.campaign_filter(user=user, need="view", prefix="campaign__")
    )
    return next(iter(qs.only("id", "clip", "poster")[:1]), None)


def assignment_detail(*, assignment_id: int) -> Assignment:
    """The lease with its pair, both items and the prompt, in one query."""
    return Assignment.objects.select_related(
        "campaign", "pair__item_a__prompt", "pair__item_b"
    ).get(pk=assignment_id)


def _columns(model: Any, alias: str) -> str:
    return ", ".join(f"{alias}.{f.column}" for f in model._meta.concrete_fields)


_CONVERTERS: dict[tuple[Any, str], list[tuple[Any, list[Any]]]] = {}


def _converters(model: Any) -> list[tuple[Any, list[Any]]]:
    """Per column of `model`, what the ORM would apply to the raw value (JSON decoding, and
    on SQLite datetimes): raw SQL rows then become the same instances a queryset gives."""
    key = (model, connection.vendor)
    if key not in _CONVERTERS:
        out = []
        for field in model._meta.concrete_fields:
            col = field.get_col(model._meta.db_table)
            converters = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            out.append((col, converters))
        _CONVERTERS[key] = out
    return _CONVERTERS[key]


def _instance(model: Any, values: Sequence[Any]) -> Any:
    fields = model._meta.concrete_fields
    converted = []
    for (col, converters), value in zip(_converters(model), values, strict=True):
        for convert in converters:
            value = convert(value, col, connection)
        converted.append(value)
    return model.from_db(connection.alias, [f.attname for f in fields], converted)


def pair_with_items_sql(*, pair_ids: str) -> str:
    """SQL for the pairs whose ids the SQL `pair_ids` gives (a subquery with column `id`),
    with both items and the prompt, in the columns `pair_with_items` decodes."""
    return (
        f"SELECT {_columns(Pair, 'p')}, {_columns(Item, 'ia')}, {_columns(Item, 'ib')}, "
        f"{_columns(Prompt, 'pr')} FROM ({pair_ids}) chosen "
        f"JOIN {Pair._meta.db_table} p ON p.id = chosen.id "
        f"JOIN {Item._meta.db_table} ia ON ia.id = p.item_a_id "
        f"JOIN {Item._meta.db_table} ib ON ib.id = p.item_b_id "
        f"LEFT JOIN {Prompt._meta.db_table} pr ON pr.id = ia.prompt_id"
    )


def pair_with_items(row: Sequence[Any]) -> Pair:
    """The Pair, with item_a (and its prompt) and item_b loaded, from a row of
    `pair_with_items_sql`."""
    n_pair, n_item = len(Pair._meta.concrete_fields), len(Item._meta.concrete_fields)
    pair = _instance(Pair, row[:n_pair])
    item_a = _instance(Item, row[n_pair : n_pair + n_item])
    item_b = _instance(Item, row[n_pair + n_item : n_pair + 2 * n_item])
    if row[n_pair + 2 * n_item] is not None:
        item_a.prompt = _instance(Prompt, row[n_pair + 2 * n_item :])
    pair.item_a, pair.item_b = item_a, item_b
    return pair


# The pair this annotator will most likely be leased after the current one, for the compare
# page to preload its clips. Non-binding and approximate: it applies the lease's own filters
# (ready, not full by judgments, neither judged nor skipped by them) and the campaign's ORDER
# BY, but not others' live leases nor the order's preference tiers, so the lease may still
# hand out another pair; a wrong guess costs one unused download. The ORDER BY is that of the
# `pair_lease_order` index, so this is one index scan that stops at the first row.
_PEEK_SQL = """
SELECT p.id FROM {pair} p
WHERE p.campaign_id = %(campaign)s AND p.ready AND p.judgment_count < %(k)s
  AND p.id <> %(current)s
  AND NOT EXISTS (SELECT 1 FROM {judgment} j WHERE j.pair_id = p.id AND j.annotator_id = %(me)s)
  AND NOT EXISTS (SELECT 1 FROM {skip} s WHERE s.pair_id = p.id AND s.annotator_id = %(me)s)
ORDER BY {order}
LIMIT 1
"""


def pair_peek_next(
    *, annotator: AbstractBaseUser, campaign: Campaign, current_pair_id: int
) -> Pair | None:
    """The pair, with both items, that `annotator` will probably be leased after the one they
    hold (`current_pair_id`), or None: a guess for preloading, never a reservation (see
    _PEEK_SQL). Trajectory campaigns only; text pairs have nothing worth preloading."""
    if campaign.kind != Campaign.Kind.TRAJECTORY:
        return None
    sql = _PEEK_SQL.format(
        pair=Pair._meta.db_table,
        judgment=Judgment._meta.db_table,
        skip=Skip._meta.db_table,
        order=pair_order_for(campaign.pair_order).order_by,
    )
    params = {
        "campaign": campaign.pk,
        "k": campaign.judgments_per_pair,
        "current": current_pair_id,
        "me": annotator.pk,
    }
    with connection.cursor() as cursor:
        cursor.execute(pair_with_items_sql(pair_ids=sql), params)
        row = cursor.fetchone()
    return pair_with_items(row) if row is not None else None


_criteria: ProcessCache[list[str]] = ProcessCache("criteria", max_age=300.0)


def criteria_slugs(*, campaign_id: int) -> list[str]:
    """The campaign's criteria in order, from the process cache (every write to a criterion
    invalidates it; feedback_app/process_cache.py). A copy: callers may change it."""
    return list(
        _criteria.get_or_load(
            campaign_id,
            lambda: list(
                Criterion.objects.filter(campaign_id=campaign_id).values_list("slug", flat=True)
            ),
        )
    )


def judgments_page(
    *,
    campaign: Campaign,
    viewer: AbstractBaseUser,
    after: int = 0,
    limit: int = 100,
    every: bool = False,
) -> list[dict[str, Any]]:
    """Judgments with id > after, oldest first, for incremental pulls.

    Only rows inserted at least JUDGMENT_SETTLE_SECONDS ago (by the database's clock) are
    returned, so a row with a lower id whose transaction is still committing is never
    jumped over by the cursor.
    With `every` (a manager's view) all rows with every field; otherwise only the viewer's
    own, without ids.
    """
    qs = Judgment.objects.filter(
        campaign=campaign,
        id__gt=after,
        created_at__lte=Now() - timedelta(seconds=settings.JUDGMENT_SETTLE_SECONDS),
    )
    if not every:
        qs = qs.filter(annotator_id=viewer.pk)
    rows = list(
        qs.order_by("id").values(
            "id",
            "pair_id",
            "pair__item_a_id",
            "pair__item_b_id",
            "annotator_id",
            "choices",
            "shown_left_id",
            "duration_ms",
            "status",
            "created_at",
        )[:limit]
    )
    if not every:
        # An annotator's own work, without the ids and canonical orientation that would
        # reveal import order: choices as they saw the sides.
        return [
            {
                "id": r["id"],
                "choices": choices_as_shown(
                    r["choices"], a_on_left=r["shown_left_id"] == r["pair__item_a_id"]
                ),
                "duration_ms": r["duration_ms"],
                "status": r["status"],
                "created_at": r["created_at"],
            }
            for r in rows
        ]
    return [
        {
            "id": r["id"],
            "pair": r["pair_id"],
            "item_a": r["pair__item_a_id"],
            "item_b": r["pair__item_b_id"],
            "annotator": annotator_pseudonym(r["annotator_id"]),
            "choices": r["choices"],
            "shown_left": r["shown_left_id"],
            "duration_ms": r["duration_ms"],
            "status": r["status"],
            "created_at": r["created_at"],
        }
        for r in rows
    ]


def _item_fields(kind: str) -> tuple[str, ...]:
    if kind == Campaign.Kind.TEXT:
        return ("id", "external_id", "content", "source")
    return ("id", "external_id", "source", "dataset", "episode", "start", "length", "clip")


@dataclass(frozen=True)
class ExportStream:
    """An export as of one moment: `rows` lines, then the body in chunks of whole lines.

    On PostgreSQL `chunks` runs inside the export's read transaction on this thread's
    connection: iterate it to the end or close() it (a StreamingHttpResponse does, also when
    the client goes away), and write nothing on this thread's connection meanwhile -- the
    transaction is READ ONLY, so such a write fails rather than sharing its fate."""

    rows: int
    chunks: Generator[bytes, None, None]


def _export_pages(qs: QuerySet[Any], columns: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    """The rows of `qs` in id order, a page at a time: `id > last ORDER BY id LIMIT n`, each
    page one ordinary query (embedded mode). `columns` starts with "id"."""
    size = min(EXPORT_PAGE, 2000)  # rows as Python objects: a few MB at most
    last = 0
    while True:
        page = list(qs.filter(id__gt=last).order_by("id").values_list(*columns)[:size])
        yield from page
        if len(page) < size:
            return
        last = page[-1][0]


def _chunks(lines: Iterator[str], size: int = 64 * 1024) -> Iterator[bytes]:
    """Lines grouped into chunks of about `size` bytes: one write per chunk, not per line."""
    block: list[bytes] = []
    filled = 0
    for line in lines:
        data = line.encode()
        block.append(data)
        filled += len(data)
        if filled >= size:
            yield b"".join(block)
            block, filled = [], 0
    if block:
        yield b"".join(block)


def _export_sqlite(
    qs: QuerySet[Any], columns: Sequence[str], line: Callable[[tuple[Any, ...]], str]
) -> ExportStream:
    """Embedded mode: rows read page by page and written as JSON by Python.

    SQLite runs one writer at a time and judgments are never deleted (skips only with their
    annotator's account), so every row with an id up to the highest one seen is already
    committed and no later insert can take such an id: `id <= top` is exact without a
    transaction. An atomic block would be an IMMEDIATE transaction here, holding the write
    lock -- every annotator's submit -- for as long as the download takes."""
    agg = qs.aggregate(n=Count("id"), top=Max("id"))
    rows = qs.filter(id__lte=agg["top"] or 0)

    def chunks() -> Generator[bytes, None, None]:
        yield from _chunks(line(row) for row in _export_pages(rows, columns))

    return ExportStream(rows=agg["n"], chunks=chunks())


# ---- exports on PostgreSQL ---------------------------------------------------------------------
#
# PostgreSQL writes every line of JSON itself, in one statement read through a cursor that is
# declared inside the export's REPEATABLE READ, READ ONLY transaction: NO SCROLL and WITHOUT
# HOLD, so PostgreSQL runs the plan as rows are fetched instead of building the whole result
# first (as it would for the WITH HOLD cursor Django declares in autocommit), and the web
# process holds one fetch at a time (never the whole result, as a client-side query would
# with DISABLE_SERVER_SIDE_CURSORS behind PgBouncer). One statement, so each item and prompt
# is written as JSON once per run of rows that name it (Memoize), not once per row. Between
# two fetches the session is idle in its transaction, as with the keyset pages before: a
# client that stalls holds the snapshot and the connection, never a running statement.
#
# Rows per fetch: EXPORT_FIRST_PAGE first, so the first bytes leave at once, then up to four
# times more per fetch, at most EXPORT_PAGE rows and about EXPORT_PAGE_BYTES bytes (judged
# from the last fetch's rows).
EXPORT_FIRST_PAGE = 256
EXPORT_PAGE_BYTES = 8 * 1024 * 1024
# Memory PostgreSQL may use for the items and prompts it keeps (Memoize takes twice this).
EXPORT_WORK_MEM = "32MB"


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_members_sql(fields: Sequence[tuple[str, str]], *, start: str) -> str:
    """SQL for the text `<start>"key":value,"key":value...` of a JSON object's members:
    (key, SQL of the value's JSON text) in order, with the separators of
    json.dumps(separators=(",", ":")). `start` is "{" for an object's first member, ","
    for the later ones."""
    parts = [
        _sql_literal((start if n == 0 else ",") + json.dumps(key) + ":") + " || " + value
        for n, (key, value) in enumerate(fields)
    ]
    return "(" + "\n || ".join(parts) + ")"


def _json_int(column: str, *, null: bool = False) -> str:
    return f"COALESCE({column}::text, 'null')" if null else f"{column}::text"


def _json_text(column: str) -> str:
    # PostgreSQL escapes as json.dumps(ensure_ascii=False) does: \" \\ \b \f \n \r \t, other
    # control characters as \u00XX, and nothing else (U+2028 stays as it is).
    return f"to_json({column})::text"


def _json_utc(column: str) -> str:
    # datetime.isoformat() of a UTC time: microseconds unless they are zero, then +00:00.
    return (
        f"""'"' || replace(to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),"""
        """ '.000000', '') || '+00:00"'"""
    )


def _item_json_sql(kind: str, alias: str) -> str:
    def value(name: str) -> str:
        column = f"{alias}.{name}"
        if name == "id":
            return _json_int(column)
        if name in ("start", "length"):
            return _json_int(column, null=True)
        return _json_text(column)

    return _json_members_sql([(name, value(name)) for name in _item_fields(kind)], start="{")


def _kept(select: str, *, key: str, name: str) -> str:
    """A one-row subquery on `key` that PostgreSQL runs once per value of `key` and keeps
    (Memoize), rather than once per row: OFFSET 0 keeps it from being flattened."""
    return f"CROSS JOIN LATERAL ({select} WHERE {key} OFFSET 0) {name}"


def _pseudonym_sql(column: str) -> str:
    return f"(a.pseudonym -> {column}::text)::text"


@functools.cache
def _bytes_loader() -> type:
    """A psycopg loader that hands over text as bytes: rows are sent as they are, never
    decoded and encoded again."""

    class BytesLoader(Loader):
        def load(self, data: Any) -> bytes:
            return bytes(data)

    return BytesLoader


def _export_postgresql(*, campaign: Campaign, table: str, line: str, joins: str) -> ExportStream:
    """Count the campaign's rows of `table` (alias `t`), then stream them as the lines of
    SQL `line`, all as of one moment, so the count is exactly the number of lines. Returns
    once the count is known; the rows are fetched as the chunks are consumed."""
    count_sql = (
        f'SELECT annotator_id, COUNT(*) FROM "{table}" WHERE campaign_id = %(campaign_id)s'
        " GROUP BY annotator_id"
    )
    rows_sql = (
        f"DECLARE export_rows NO SCROLL CURSOR WITHOUT HOLD FOR SELECT {line} || E'\\n'"
        f' FROM "{table}" t CROSS JOIN (SELECT %(annotators)s::jsonb AS pseudonym) a {joins}'
        " WHERE t.campaign_id = %(campaign_id)s ORDER BY t.id"
    )
    params: dict[str, int | str] = {
        "campaign_id": campaign.pk,
        "campaign": json.dumps(campaign.slug),
    }

    def produce() -> Generator[int | bytes, None, None]:
        db = Judgment.objects.db
        connection = connections[db]
        outermost = not connection.in_atomic_block
        with transaction.atomic(using=db), connection.cursor() as cursor:
            if outermost:
                # One snapshot for the count and every row: a submit that commits meanwhile
                # (even one whose id is lower than rows already counted) is in neither.
                # Inside a caller's transaction (the tests'), its level is the caller's.
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            # Compiling the plan (JIT) would cost more than it saves before the first row.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute(f"SET LOCAL work_mem = '{EXPORT_WORK_MEM}'")
            cursor.execute(count_sql, params)
            per_annotator = cursor.fetchall()
            params["annotators"] = json.dumps(
                {str(user_id): annotator_pseudonym(user_id) for user_id, _ in per_annotator}
            )
            yield sum(n for _, n in per_annotator)
            cursor.execute(rows_sql, params)
            cursor.cursor.adapters.register_loader("text", _bytes_loader())
            want = min(EXPORT_FIRST_PAGE, EXPORT_PAGE)
            while True:
                cursor.execute(f"FETCH FORWARD {want} FROM export_rows")
                fetched = cursor.fetchall()
                if fetched:
                    chunk = b"".join([row[0] for row in fetched])
                    yield chunk
                if len(fetched) < want:
                    break
                want = max(1, min(EXPORT_PAGE, 4 * want, EXPORT_PAGE_BYTES * want // len(chunk)))
            cursor.execute("CLOSE export_rows")  # a caller's transaction may go on

    stream = produce()
    rows = cast(int, next(stream))
    return ExportStream(rows=rows, chunks=cast(Generator[bytes, None, None], stream))


def _judgment_export_postgresql(*, campaign: Campaign) -> ExportStream:
    # The prompt and item a, and item b, each once per run of rows that name them; a row
    # then joins the three texts to its own few fields.
    item_a = _json_members_sql(
        [
            (
                "prompt",
                "CASE WHEN p.messages IS NULL OR p.messages IN"
                " ('[]', '{}', '\"\"', '0', 'false', 'null') THEN '[]'"  # as `messages or []`
                " ELSE p.messages::text END",
            ),
            ("prompt_id", _json_text("COALESCE(p.external_id, '')")),
            ("item_a", _item_json_sql(campaign.kind, "i") + " || '}'"),
        ],
        start=",",
    )
    item_b = _json_members_sql(
        [("item_b", _item_json_sql(campaign.kind, "i") + " || '}'")], start=","
    )
    head = _json_members_sql(
        [
            ("judgment_id", _json_int("t.id")),
            ("campaign", "%(campaign)s"),
            ("pair_id", _json_int("t.pair_id")),
        ],
        start="{",
    )
    tail = _json_members_sql(
        [
            ("choices", "t.choices::text"),
            ("shown_left", _json_int("t.shown_left_id")),
            ("annotator", _pseudonym_sql("t.annotator_id")),
            ("duration_ms", _json_int("t.duration_ms", null=True)),
            ("status", _json_text("t.status")),
            ("created_at", _json_utc("t.created_at")),
        ],
        start=",",
    )
    return _export_postgresql(
        campaign=campaign,
        table="annotation_judgment",
        line=f"{head} || ia.json || ib.json || ({tail} || '}}')",
        joins=" ".join(
            [
                'JOIN "annotation_pair" pr ON pr.id = t.pair_id',
                _kept(
                    f'SELECT {item_a} AS json FROM "annotation_item" i'
                    ' LEFT JOIN "annotation_prompt" p ON p.id = i.prompt_id',
                    key="i.id = pr.item_a_id",
                    name="ia",
                ),
                _kept(
                    f'SELECT {item_b} AS json FROM "annotation_item" i',
                    key="i.id = pr.item_b_id",
                    name="ib",
                ),
            ]
        ),
    )


def judgment_export(*, campaign: Campaign) -> ExportStream:
    """Every judgment of the campaign as JSON Lines, oldest first, as of one moment, with
    the pair's prompt and both items; annotators appear only as pseudonyms.

    On PostgreSQL the nested JSON values (the prompt's messages, the choices) are written as
    PostgreSQL writes jsonb: the same keys in the same order and the same values, with a
    space after each ':' and ','."""
    if connections[Judgment.objects.db].vendor == "postgresql":
        return _judgment_export_postgresql(campaign=campaign)
    return _judgment_export_sqlite(campaign=campaign)


def _judgment_export_sqlite(*, campaign: Campaign) -> ExportStream:
    item_fields = _item_fields(campaign.kind)
    columns = (
        [
            "id",
            "pair_id",
            "annotator_id",
            "choices",
            "shown_left_id",
            "duration_ms",
            "status",
            "created_at",
            "pair__item_a__prompt__messages",
            "pair__item_a__prompt__external_id",
        ]
        + [f"pair__item_a__{f}" for f in item_fields]
        + [f"pair__item_b__{f}" for f in item_fields]
    )
    n_fixed = 10
    n_item = len(item_fields)
    pseudonyms = _pseudonyms()

    def line(row: tuple[Any, ...]) -> str:
        item_a = dict(zip(item_fields, row[n_fixed : n_fixed + n_item], strict=True))
        item_b = dict(zip(item_fields, row[n_fixed + n_item :], strict=True))
        record = {
            "judgment_id": row[0],
            "campaign": campaign.slug,
            "pair_id": row[1],
            "prompt": row[8] or [],
            "prompt_id": row[9] or "",
            "item_a": item_a,
            "item_b": item_b,
            "choices": row[3],
            "shown_left": row[4],
            "annotator": pseudonyms[row[2]],
            "duration_ms": row[5],
            "status": row[6],
            "created_at": row[7].isoformat(),
        }
        return _jsonl(record) + "\n"

    return _export_sqlite(Judgment.objects.filter(campaign=campaign), columns, line)


def skip_export(*, campaign: Campaign) -> ExportStream:
    """Every skip of the campaign as JSON Lines, oldest first, as of one moment."""
    if connections[Skip.objects.db].vendor == "postgresql":
        line_sql = _json_members_sql(
            [
                ("skip_id", _json_int("t.id")),
                ("campaign", "%(campaign)s"),
                ("pair_id", _json_int("t.pair_id")),
                ("item_a", _json_int("pr.item_a_id")),
                ("item_b", _json_int("pr.item_b_id")),
                ("annotator", _pseudonym_sql("t.annotator_id")),
                ("reason", _json_text("t.reason")),
                ("created_at", _json_utc("t.created_at")),
            ],
            start="{",
        )
        return _export_postgresql(
            campaign=campaign,
            table="annotation_skip",
            line=f"{line_sql} || '}}'",
            joins='JOIN "annotation_pair" pr ON pr.id = t.pair_id',
        )
    columns = (
        "id",
        "pair_id",
        "pair__item_a_id",
        "pair__item_b_id",
        "annotator_id",
        "reason",
        "created_at",
    )
    pseudonyms = _pseudonyms()

    def line(row: tuple[Any, ...]) -> str:
        sid, pair_id, a, b, annotator_id, reason, created_at = row
        record = {
            "skip_id": sid,
            "campaign": campaign.slug,
            "pair_id": pair_id,
            "item_a": a,
            "item_b": b,
            "annotator": pseudonyms[annotator_id],
            "reason": reason,
            "created_at": created_at.isoformat(),
        }
        return _jsonl(record) + "\n"

    return _export_sqlite(Skip.objects.filter(campaign=campaign), columns, line)


# ---- pairs and leases mapped back to their source rows (staff) ---------------------------

_SIDE_FIELDS = (
    "id",
    "external_id",
    "source",
    "dataset",
    "episode",
    "start",
    "length",
    "source_dataset_id",
    "clip_status",
)


def _side(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    """One item of a pair as staff and training code see it: for a segment cut from a stored
    dataset, `start` is its first row in the imported source, `episode` the episode's
    index, and the rows are start .. start + length - 1."""
    side = {name: row[f"{prefix}{name}"] for name in _SIDE_FIELDS}
    if side.pop("source_dataset_id") is not None:
        side["episode"] = int(side["episode"])
    return side


def _pair_rows(queryset: QuerySet[Pair]) -> list[dict[str, Any]]:
    names = ["id", "ready", "judgment_count"]
    names += [f"item_{s}__{name}" for s in "ab" for name in _SIDE_FIELDS]
    return [
        {
            "id": row["id"],
            "ready": row["ready"],
            "judgment_count": row["judgment_count"],
            "item_a": _side(row, "item_a__"),
            "item_b": _side(row, "item_b__"),
        }
        for row in queryset.values(*names)
    ]


def pairs_page(*, campaign: Campaign, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """The campaign's pairs with id > after, in id order, each side with its dataset,
    episode and row range."""
    return _pair_rows(Pair.objects.filter(campaign=campaign, id__gt=after).order_by("id")[:limit])


def assignment_staff_detail(*, assignment: Assignment) -> dict[str, Any]:
    """A lease resolved to its pair and the two segments, with the side each was shown on,
    for staff and scripted teachers mapping judgments to transitions."""
    (pair,) = _pair_rows(Pair.objects.filter(pk=assignment.pair_id))
    judgment = Judgment.objects.filter(
        pair_id=assignment.pair_id, annotator_id=assignment.annotator_id
    ).values_list("id", flat=True)
    return {
        "assignment": assignment.pk,
        "campaign": assignment.campaign.slug,
        "annotator": assignment.annotator_id,
        "status": assignment.status,
        "leased_at": assignment.leased_at,
        "expires_at": assignment.expires_at,
        "left": "item_a" if assignment.a_on_left else "item_b",
        "judgment": judgment.first(),
        "pair": pair,
    }


# --- Datasets -------------------------------------------------------------------------


def datasets_page(*, before: int = 0, limit: int) -> list[Dataset]:
    """Datasets newest first (by id), `limit` of them, those with an id below `before` when
    it is set. The metadata stays unread: no page shows it."""
    rows = Dataset.objects.defer("metadata").order_by("-id")
    if before:
        rows = rows.filter(id__lt=before)
    return list(rows[:limit])


@dataclass(frozen=True)
class EpisodeSummary:
    count: int
    terminated: int
    truncated: int
    length_min: int | None
    length_median: float | None
    length_max: int | None
    policies: list[dict[str, Any]]  # [{"policy": name, "episodes": n}], named ones only


def dataset_episode_summary(*, dataset: Dataset) -> EpisodeSummary:
    """Counts and lengths of the dataset's episodes, read in three statements whatever
    their number: the aggregates, the one or two middle lengths, the policies."""
    episodes = Episode.objects.filter(dataset=dataset)
    totals = episodes.aggregate(
        count=Count("id"),
        terminated=Count("id", filter=Q(terminated=True)),
        truncated=Count("id", filter=Q(truncated=True)),
        length_min=Min("length"),
        length_max=Max("length"),
    )
    count = totals["count"]
    median: float | None = None
    if count:
        low = (count - 1) // 2
        middle = list(
            episodes.order_by("length").values_list("length", flat=True)[low : count // 2 + 1]
        )
        median = sum(middle) / len(middle)
    policies = list(
        episodes.exclude(policy="")
        .values("policy")
        .annotate(episodes=Count("id"))
        .order_by("policy")
    )
    return EpisodeSummary(
        count=count,
        terminated=totals["terminated"],
        truncated=totals["truncated"],
        length_min=totals["length_min"],
        length_median=median,
        length_max=totals["length_max"],
        policies=policies,
    )


def dataset_by_id(*, dataset_id: int) -> Dataset | None:
    if not 0 < dataset_id < 2**63:
        return None
    return Dataset.objects.defer("metadata").filter(pk=dataset_id).first()


# --- clips -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipsSummary:
    counts: dict[str, int]  # per clip status, every status named ("" as "none")
    pairs_ready: int
    pairs_waiting: int
    failed: list[dict[str, Any]]  # id order, after `after`, at most `limit`
    next_after: int | None  # the last failed id of a full page


def clips_summary(*, campaign: Campaign, after: int = 0, limit: int = 100) -> ClipsSummary:
    """Where the campaign's clips stand: items per clip status, pairs ready and waiting, and
    a page of the failed items with their errors (by id, after `after`). Three statements,
    read in one snapshot: the counts and the failed rows agree."""
    with one_snapshot():
        return _clips_summary(campaign=campaign, after=after, limit=limit)


@contextlib.contextmanager
def one_snapshot() -> Iterator[None]:
    """Every statement inside reads one snapshot (PostgreSQL: REPEATABLE READ, READ ONLY;
    SQLite's transactions are serialisable already). Inside a caller's transaction (the
    tests'), its snapshot rules."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def _clips_summary(*, campaign: Campaign, after: int, limit: int) -> ClipsSummary:
    by_status = dict(
        Item.objects.filter(campaign=campaign)
        .values_list("clip_status")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts = {(s.value or "none"): int(by_status.get(s.value, 0)) for s in ClipStatus}
    pairs = dict(
        Pair.objects.filter(campaign=campaign)
        .values_list("ready")
        .annotate(n=Count("id"))
        .order_by()
    )
    failed = list(
        Item.objects.filter(campaign=campaign, clip_status=ClipStatus.FAILED, pk__gt=after)
        .order_by("pk")
        .values("id", "external_id", "source_dataset_id", "episode", "start", "length")
        .annotate(error=F("clip_error"))[:limit]
    )
    return ClipsSummary(
        counts=counts,
        pairs_ready=int(pairs.get(True, 0)),
        pairs_waiting=int(pairs.get(False, 0)),
        failed=failed,
        next_after=failed[-1]["id"] if len(failed) == limit else None,
    )
