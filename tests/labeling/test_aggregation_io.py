"""An aggregation run's data path on PostgreSQL: judgments streamed into arrays, the same
results as the plain per-judgment computation, the prior recorded, and rows written only
where they changed."""

import numpy as np
import pytest

from annotation.models import Campaign, Judgment, Pair
from labeling import bradley_terry
from labeling.models import AggregationState, ItemScore, PairLabel
from labeling.services import aggregation as agg
from labeling.services import aggregation_io
from tests.factories import UserFactory, text_campaign

CHOICES = ["a", "b", "tie", "both_bad"]


def judge(campaign, users, seed=0, pairs=None):
    """Each user judges each pair once, at random; a few choices name no criterion."""
    rng = np.random.default_rng(seed)
    slugs = list(campaign.criteria.values_list("slug", flat=True))
    pairs = list(Pair.objects.filter(campaign=campaign)) if pairs is None else pairs
    Judgment.objects.bulk_create(
        Judgment(
            pair=pair,
            annotator=user,
            campaign=campaign,
            choices={slug: CHOICES[rng.integers(4)] for slug in slugs if rng.random() > 0.05},
            shown_left_id=pair.item_a_id,
        )
        for pair in pairs
        for user in users
    )


def expected(campaign, slug):
    """Scores and labels the plain way: one Python row per judgment, as the aggregation
    computed them before it streamed arrays."""
    outcome_of = {"a": 1.0, "b": 0.0, "tie": 0.5}
    if campaign.both_bad_counts_as == Campaign.BothBad.TIE:
        outcome_of["both_bad"] = 0.5
    rows = [
        (pair, a, b, outcome_of[choices[slug]])
        for pair, a, b, choices in Judgment.objects.filter(
            campaign=campaign, status=Judgment.Status.ACTIVE
        ).values_list("pair_id", "pair__item_a_id", "pair__item_b_id", "choices")
        if choices.get(slug) in outcome_of
    ]
    items = sorted({item for _, a, b, _ in rows for item in (a, b)})
    index = {item: n for n, item in enumerate(items)}
    comparisons = bradley_terry.comparisons_from_outcomes(
        n_items=len(items),
        first=[index[a] for _, a, _, _ in rows],
        second=[index[b] for _, _, b, _ in rows],
        outcome=[o for *_, o in rows],
    )
    fit = bradley_terry.fit(comparisons=comparisons, l2=campaign.l2_prior)
    labels: dict[int, list[float]] = {}
    for pair, _, _, outcome in rows:
        labels.setdefault(pair, []).append(outcome)
    return (
        dict(zip(items, fit.scores.tolist(), strict=True)),
        {pair: (float(np.mean(o)), len(o)) for pair, o in labels.items()},
        fit.l2,
    )


@pytest.mark.django_db
@pytest.mark.parametrize("policy", ["tie", "exclude"])
def test_the_streamed_run_gives_the_per_judgment_results(policy):
    users = UserFactory.create_batch(4)
    campaign = text_campaign(
        n_prompts=6, responses=4, criteria=["helpful", "harmless"], both_bad_counts_as=policy
    )
    judge(campaign, users)
    Judgment.objects.filter(annotator=users[3]).update(status=Judgment.Status.RETRACTED)
    assert agg.aggregation_run(campaign_id=campaign.pk) == agg.RunOutcome.APPLIED
    state = AggregationState.objects.get(campaign=campaign)
    assert state.judgments_used == 6 * 6 * 3
    for slug in ("helpful", "harmless"):
        scores, labels, l2 = expected(campaign, slug)
        stored = dict(
            ItemScore.objects.filter(campaign=campaign, criterion__slug=slug).values_list(
                "item_id", "score"
            )
        )
        assert stored.keys() == scores.keys()
        for item, score in scores.items():
            assert stored[item] == pytest.approx(score, abs=1e-9)
        stored_labels = {
            p: (a, n)
            for p, a, n in PairLabel.objects.filter(
                campaign=campaign, criterion__slug=slug
            ).values_list("pair_id", "prefer_a", "count")
        }
        assert stored_labels.keys() == labels.keys()
        for pair, (prefer_a, count) in labels.items():
            assert stored_labels[pair] == (pytest.approx(prefer_a, abs=1e-12), count)
        assert state.fit_l2[slug] == pytest.approx(l2)


@pytest.mark.django_db
def test_a_campaign_prior_overrides_the_chosen_one():
    users = UserFactory.create_batch(3)
    campaign = text_campaign(n_prompts=4, responses=4)
    judge(campaign, users, seed=1)
    agg.aggregation_run(campaign_id=campaign.pk)
    chosen = AggregationState.objects.get(campaign=campaign).fit_l2["overall"]
    chosen_scores = dict(ItemScore.objects.values_list("item_id", "score"))
    assert chosen != 0.37
    Campaign.objects.filter(pk=campaign.pk).update(l2_prior=0.37)
    agg.aggregation_run(campaign_id=campaign.pk)
    assert AggregationState.objects.get(campaign=campaign).fit_l2 == {"overall": 0.37}
    scores, _, _ = expected(Campaign.objects.get(pk=campaign.pk), "overall")
    stored = dict(ItemScore.objects.values_list("item_id", "score"))
    assert stored == pytest.approx(scores, abs=1e-9) and stored != chosen_scores


@pytest.mark.django_db
def test_rows_are_written_only_where_they_changed():
    users = UserFactory.create_batch(3)
    campaign = text_campaign(n_prompts=5, responses=3)
    pairs = list(Pair.objects.filter(campaign=campaign).order_by("id"))
    judge(campaign, users[:2], seed=2, pairs=pairs[:-1])
    agg.aggregation_run(campaign_id=campaign.pk)
    before_scores = {s.pk: (s.score, s.updated_at) for s in ItemScore.objects.all()}
    before_labels = {lab.pk: lab.updated_at for lab in PairLabel.objects.all()}

    agg.aggregation_run(campaign_id=campaign.pk)  # nothing changed: nothing written
    assert {s.pk: (s.score, s.updated_at) for s in ItemScore.objects.all()} == before_scores
    assert {lab.pk: lab.updated_at for lab in PairLabel.objects.all()} == before_labels

    # One new judgment of an unjudged pair: one label row is inserted, no other label row
    # is touched; scores move only within the new pair's prompt (its own component).
    judge(campaign, users[2:], seed=3, pairs=pairs[-1:])
    agg.aggregation_run(campaign_id=campaign.pk)
    labels = {lab.pk: lab.updated_at for lab in PairLabel.objects.all()}
    assert len(labels) == len(before_labels) + 1
    assert {pk: labels[pk] for pk in before_labels} == before_labels
    touched = {
        s.item_id
        for s in ItemScore.objects.all()
        if s.pk not in before_scores or s.updated_at != before_scores[s.pk][1]
    }
    last = pairs[-1]
    assert {last.item_a_id, last.item_b_id} <= touched
    assert touched <= set(
        Pair.objects.filter(group_key=last.group_key).values_list("item_a_id", flat=True)
    ) | set(Pair.objects.filter(group_key=last.group_key).values_list("item_b_id", flat=True))


@pytest.mark.django_db
def test_a_changed_value_is_updated_and_a_gone_row_deleted():
    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=3)
    judge(campaign, users, seed=4)
    criterion = campaign.criteria.get().pk
    stored = aggregation_io._stored(aggregation_io.LABELS, campaign.pk)[1]
    assert stored.key.size == 0
    pairs = list(Pair.objects.filter(campaign=campaign).order_by("id").values_list("id", flat=True))
    new = aggregation_io.Results.of(
        key=pairs[:2], criterion=criterion, value=[0.5, 1.0], count=[2, 1]
    )
    written = aggregation_io.results_apply(
        table=aggregation_io.LABELS, campaign_id=campaign.pk, new=new
    )
    assert written == {"updated": 0, "inserted": 2, "deleted": 0}
    changed = aggregation_io.Results.of(
        key=pairs[1:], criterion=criterion, value=[0.25, 0.0], count=[4, 1]
    )
    written = aggregation_io.results_apply(
        table=aggregation_io.LABELS, campaign_id=campaign.pk, new=changed
    )
    assert written == {"updated": 1, "inserted": 1, "deleted": 1}
    assert sorted(PairLabel.objects.values_list("pair_id", "prefer_a", "count")) == [
        (pairs[1], 0.25, 4),
        (pairs[2], 0.0, 1),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("hint", [0, 3, 10_000])
def test_a_read_returns_every_row_whatever_its_size_hint(hint):
    users = UserFactory.create_batch(5)
    campaign = text_campaign(n_prompts=4, responses=4)
    judge(campaign, users, seed=5)
    sql = "SELECT CAST(id AS bigint), CAST(pair_id AS bigint) FROM annotation_judgment ORDER BY id"
    columns = [("id", "i8"), ("pair", "i8")]
    copied = aggregation_io._copy_out(sql, [], columns, hint)
    fetched = aggregation_io._fetch(sql, [], columns, hint)  # the path of other databases
    rows = list(Judgment.objects.order_by("id").values_list("id", "pair_id"))
    assert len(rows) == 4 * 6 * 5
    for got in (copied, fetched):
        assert list(zip(got["id"].tolist(), got["pair"].tolist(), strict=True)) == rows
