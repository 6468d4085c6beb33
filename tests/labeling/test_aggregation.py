import pytest

from annotation.models import Campaign, Judgment, Pair
from labeling import services
from labeling.models import ItemScore, PairLabel
from tests.factories import UserFactory, text_campaign


def judge_all(campaign, users, choices_per_user):
    pair = Pair.objects.filter(campaign=campaign).first()
    Judgment.objects.bulk_create(
        Judgment(pair=pair, annotator=u, campaign=campaign, choices=c, shown_left_id=pair.item_a_id)
        for u, c in zip(users, choices_per_user, strict=True)
    )
    return pair


@pytest.mark.django_db
@pytest.mark.parametrize("policy, prefer_a, count", [("tie", 0.75, 2), ("exclude", 1.0, 1)])
def test_both_bad_counts_per_campaign_policy(policy, prefer_a, count):
    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, both_bad_counts_as=policy)
    pair = judge_all(campaign, users, [{"overall": "a"}, {"overall": "both_bad"}])
    services.aggregation_run(campaign_id=campaign.pk)
    label = PairLabel.objects.get(pair=pair)
    assert label.prefer_a == pytest.approx(prefer_a) and label.count == count


@pytest.mark.django_db
def test_each_criterion_gets_its_own_scores_and_labels_and_excluded_judgments_do_not_count():
    users = UserFactory.create_batch(3)
    campaign = text_campaign(n_prompts=1, responses=2, criteria=["helpful", "harmless"])
    pair = judge_all(
        campaign,
        users,
        [
            {"helpful": "a", "harmless": "b"},
            {"helpful": "a", "harmless": "b"},
            {"helpful": "b", "harmless": "b"},
        ],
    )
    Judgment.objects.filter(annotator=users[2]).update(status=Judgment.Status.EXCLUDED)
    services.aggregation_run(campaign_id=campaign.pk)
    labels = {
        lab.criterion.slug: lab
        for lab in PairLabel.objects.filter(pair=pair).select_related("criterion")
    }
    assert labels["helpful"].prefer_a == 1.0 and labels["helpful"].count == 2
    assert labels["harmless"].prefer_a == 0.0
    scores = {
        (s.criterion.slug, s.item_id): s.score
        for s in ItemScore.objects.select_related("criterion")
    }
    assert scores[("helpful", pair.item_a_id)] > scores[("helpful", pair.item_b_id)]
    assert scores[("harmless", pair.item_a_id)] < scores[("harmless", pair.item_b_id)]
    # a rerun is harmless: same rows, same values
    services.aggregation_run(campaign_id=campaign.pk)
    again = {
        (s.criterion.slug, s.item_id): s.score
        for s in ItemScore.objects.select_related("criterion")
    }
    assert again == scores and ItemScore.objects.count() == 4
    assert Campaign.objects.get(pk=campaign.pk).aggregation.runs_completed == 2


@pytest.mark.django_db
def test_only_compared_items_get_score_rows():
    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=3, responses=3)  # 9 items
    pair = judge_all(campaign, users, [{"overall": "a"}, {"overall": "tie"}])
    services.aggregation_run(campaign_id=campaign.pk)
    rows = {s.item_id: s for s in ItemScore.objects.filter(campaign=campaign)}
    assert set(rows) == {pair.item_a_id, pair.item_b_id}
    assert {s.comparisons for s in rows.values()} == {2}
    Judgment.objects.update(status=Judgment.Status.RETRACTED)
    services.aggregation_run(campaign_id=campaign.pk)
    assert not ItemScore.objects.filter(campaign=campaign).exists()
    assert not PairLabel.objects.filter(campaign=campaign).exists()
