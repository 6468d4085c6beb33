"""Which free pair an annotator gets next: one strategy per campaign (`Campaign.pair_order`).

A strategy is an ORDER BY over columns of the pair row and a list of preference tiers: extra
conditions tried in turn, the first tier that finds a free pair wins. The lease engine
(`annotation/services/leases.py`) adds the conditions every strategy shares — the pair is in
the campaign, has a free slot, and this annotator has neither judged nor skipped it — and
does the locking. Everything a strategy orders or filters on must be a column of the pair
(kept in the `pair_lease_order` index), never a join: the lease query then stays an index
scan that stops at the first free pair, however large the campaign.

Later work plugs in here: readiness (clips rendered) as a condition every tier carries, gold
pairs and active selection as a priority column in the ORDER BY.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PairOrder:
    name: str
    label: str
    # SQL over the pair row aliased `p`.
    order_by: str
    # Conditions tried in turn; `%(last_group)s` is the group (prompt or episode) of the
    # annotator's previous lease, NULL if none. "" means no extra condition.
    tiers: tuple[str, ...] = ("",)


COMPLETE_FIRST_SPREAD = PairOrder(
    name="complete_first_spread",
    label="nearly complete pairs first, then fresh pairs spread across prompts/episodes",
    # Most-judged first, so pairs complete and their labels become usable; among equals,
    # the n-th pair of every group before the (n+1)-th of any (spread_rank), then the oldest.
    order_by="p.judgment_count DESC, p.spread_rank, p.id",
    # Not the group of the previous lease while another group has a free pair: the same
    # prompt six times running tires people and correlates their errors.
    tiers=("AND (%(last_group)s IS NULL OR p.group_key <> %(last_group)s)", ""),
)

COMPLETE_FIRST = PairOrder(
    name="complete_first",
    label="nearly complete pairs first, then fresh pairs spread across groups, the previous "
    "lease's group allowed (e.g. a campaign with one prompt per annotator session)",
    order_by="p.judgment_count DESC, p.spread_rank, p.id",
)

PAIR_ORDERS: dict[str, PairOrder] = {o.name: o for o in (COMPLETE_FIRST_SPREAD, COMPLETE_FIRST)}


def pair_order_for(name: str) -> PairOrder:
    return PAIR_ORDERS.get(name, COMPLETE_FIRST_SPREAD)
