from itertools import combinations

import factory
from django.contrib.auth import get_user_model

from annotation import services
from annotation.models import Campaign, Item, Pair, Prompt


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
    """An active text campaign with every pair of each prompt's responses."""
    campaign = CampaignFactory(judgments_per_pair=k, criteria=criteria, **fields)
    pairs = []
    for _ in range(n_prompts):
        prompt = PromptFactory(campaign=campaign)
        items = ItemFactory.create_batch(responses, campaign=campaign, prompt=prompt)
        for a, b in combinations(items, 2):
            pairs.append(Pair(campaign=campaign, item_a=a, item_b=b))
    Pair.objects.bulk_create(pairs)
    for user in members:
        services.membership_add(campaign=campaign, user=user)
    return campaign
