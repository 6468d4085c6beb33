from itertools import combinations

import factory
from django.contrib.auth import get_user_model

from annotation import services
from annotation.models import Campaign, Item, Judgment, Pair, Prompt, pairs_prepare


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")

    @factory.post_generation
    def password(self, create, extracted, **kwargs):
        self.set_password(extracted or "pw")
        if create:
            self.save(update_fields=["password"])


class CampaignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Campaign
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Campaign {n}")
    slug = factory.Sequence(lambda n: f"campaign-{n}")
    kind = Campaign.Kind.TEXT
    status = Campaign.Status.ACTIVE
    judgments_per_pair = 3

    @factory.post_generation
    def criteria(self, create, extracted, **kwargs):
        for position, slug in enumerate(extracted or ["overall"]):
            self.criteria.create(slug=slug, label=slug.capitalize(), position=position)


class PromptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Prompt

    campaign = factory.SubFactory(CampaignFactory)
    messages = factory.Sequence(lambda n: [{"role": "user", "content": f"Question {n}?"}])


class ItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Item

    campaign = factory.SelfAttribute("prompt.campaign")
    prompt = factory.SubFactory(PromptFactory)
    content = factory.Sequence(lambda n: f"Answer number {n}.")
    source = "model-x"


def text_campaign(*, n_prompts=4, responses=3, k=3, members=(), criteria=None, **fields):
    """An active text campaign with every pair of each prompt's responses (bulk-inserted)."""
    campaign = CampaignFactory(judgments_per_pair=k, criteria=criteria, **fields)
    prompts = Prompt.objects.bulk_create(
        Prompt(campaign=campaign, messages=[{"role": "user", "content": f"Question {n}?"}])
        for n in range(n_prompts)
    )
    items = Item.objects.bulk_create(
        Item(
            campaign=campaign,
            prompt=prompt,
            content=f"Answer {m} to question {n}.",
            source="model-x",
        )
        for n, prompt in enumerate(prompts)
        for m in range(responses)
    )
    pairs = [
        Pair(campaign=campaign, item_a=a, item_b=b)
        for n in range(n_prompts)
        for a, b in combinations(items[n * responses : (n + 1) * responses], 2)
    ]
    Pair.objects.bulk_create(pairs_prepare(pairs))
    for user in members:
        services.membership_add(campaign=campaign, user=user)
    return campaign


def judged_campaign(n: int = 2) -> Campaign:
    """A campaign whose one pair has `n` committed judgments, inserted without the hook."""
    users = UserFactory.create_batch(n)
    campaign = text_campaign(n_prompts=1, responses=2)
    pair = Pair.objects.get(campaign=campaign)
    Judgment.objects.bulk_create(
        Judgment(
            pair=pair,
            annotator=u,
            campaign=campaign,
            choices={"overall": "a"},
            shown_left=pair.item_a,
        )
        for u in users
    )
    return campaign
