"""Seed the demo: a text campaign from the shipped JSONL, a trajectory campaign cut from
Pendulum-v1 rollouts of three hand-written policies (expert, noisy, random; generated here in
a second, their clips rendered by the media worker once it starts), a staff user and three
annotators.

Safe to re-run: existing users keep their rows, and the campaign's content is imported only
once. Passwords: in embedded mode (a laptop demo on SQLite) the documented demo passwords,
set again on every run. With DATABASE_URL set (a shared server) the published passwords would
open the server to anyone who read this file, so each new user gets a random password,
printed once, and an existing user's password is never touched.
"""

import json
import secrets
from itertools import combinations
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from rest_framework.authtoken.models import Token

from annotation import services
from annotation.models import Campaign, Dataset

DATA = Path(__file__).resolve().parents[2] / "demo" / "demo_text_campaign.jsonl"
SLUG = "demo-text"
TRAJECTORY_SLUG = "demo-pendulum"
TRAJECTORY_DATASET = "pendulum-demo"
TRAJECTORY_INSTRUCTIONS = """Each clip shows a pendulum that an agent tries to swing up and hold
**upright** with a limited torque (the arrow). Play both clips (Space), then pick the agent
that does better: **upright sooner and held there steadily** beats swinging or spinning
around. The two clips play in lock-step; `,` and `.` step a frame, `[` and `]` change speed.
Keys 1-4 choose."""
STAFF = ("admin", "admin-demo-pass")
ANNOTATORS = [(f"annotator{n}", f"annotate-demo-{n}") for n in (1, 2, 3)]
INSTRUCTIONS = """Read the conversation, then the two responses. Pick the one that a careful,
expert reader would prefer: **correct** first, then **helpful and complete**, then **clear**.
Choose *About the same* when neither is better, and *Both bad* when neither is acceptable.
Keys 1-4 choose; Skip if you cannot judge a pair."""


class Command(BaseCommand):
    help = "Create the demo campaign, a staff user and three annotators (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--data", type=Path, default=DATA, help="JSONL of prompts with responses"
        )

    def handle(self, *args, data: Path, **options):
        User = get_user_model()
        with transaction.atomic():
            users = []
            shown = []  # the password to print for each user
            for username, demo_password in [STAFF, *ANNOTATORS]:
                user, created = User.objects.get_or_create(username=username)
                user.is_staff = user.is_superuser = username == STAFF[0]
                if settings.EMBEDDED_DATABASE:
                    password: str | None = demo_password
                elif created:
                    password = secrets.token_urlsafe(18)
                else:
                    password = None
                if password is not None:
                    user.set_password(password)
                user.save()
                users.append(user)
                shown.append(password or "(unchanged)")
            campaign = Campaign.objects.filter(slug=SLUG).first()
            if campaign is None:
                campaign = self._create_campaign(data)
            trajectories = Campaign.objects.filter(slug=TRAJECTORY_SLUG).first()
            if trajectories is None:
                trajectories = self._create_trajectory_campaign(owner=users[0])
            for user in users[1:]:
                services.membership_add(campaign=campaign, user=user)
                services.membership_add(campaign=trajectories, user=user)
        for seeded in (campaign, trajectories):
            self.stdout.write(
                self.style.SUCCESS(
                    f"Campaign '{seeded.name}' ({seeded.slug}): "
                    f"{seeded.pairs.count()} pairs, k={seeded.judgments_per_pair}"
                )
            )
        self.stdout.write(
            "  (the Pendulum clips are rendered by the media worker within a minute of start)"
        )
        self.stdout.write("Log in with:")
        for user, password in zip(users, shown, strict=True):
            token, _ = Token.objects.get_or_create(user=user)
            role = "staff" if user.is_staff else "annotator"
            self.stdout.write(
                f"  {role:9}  {user.username:11} password {password:18} API token {token.key}"
            )
        if not settings.EMBEDDED_DATABASE and any(p != "(unchanged)" for p in shown):
            self.stdout.write("These passwords are shown once; nothing else stores them.")

    def _create_trajectory_campaign(self, *, owner) -> Campaign:
        """Nine 200-step episodes (three per policy, seeded: the same demo every time), cut
        into 50-step segments and paired across episodes. About 30 clips to render."""
        if not Dataset.objects.filter(name=TRAJECTORY_DATASET).exists():
            services.dataset_generate(
                env_id="Pendulum-v1",
                policies=["expert", "noisy-expert", "random"],
                episodes=9,
                seed=0,
                name=TRAJECTORY_DATASET,
            )
        return services.campaign_create_from_dataset(
            name="Demo: which agent swings the pendulum up better?",
            slug=TRAJECTORY_SLUG,
            owner=owner,
            instructions=TRAJECTORY_INSTRUCTIONS,
            judgments_per_pair=3,
            status=Campaign.Status.ACTIVE,
            source={
                "dataset": TRAJECTORY_DATASET,
                "segment_length": 50,
                "stride": 50,
                "pairs": 20,
                "sampling": "across_episode",
                "seed": 0,
            },
        )

    def _create_campaign(self, path: Path) -> Campaign:
        rows = [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        campaign = services.campaign_create(
            name="Demo: which response is better?",
            slug=SLUG,
            kind=Campaign.Kind.TEXT,
            instructions=INSTRUCTIONS,
            judgments_per_pair=3,
            status=Campaign.Status.ACTIVE,
        )
        services.prompts_bulk_create(
            campaign=campaign,
            rows=[{"external_id": r["id"], "messages": r["messages"]} for r in rows],
        )
        services.items_bulk_create(
            campaign=campaign,
            rows=[
                {
                    "external_id": resp["id"],
                    "prompt": r["id"],
                    "content": resp["content"],
                    "source": resp.get("model", ""),
                }
                for r in rows
                for resp in r["responses"]
            ],
        )
        services.pairs_bulk_create(
            campaign=campaign,
            rows=[
                {"item_a": x["id"], "item_b": y["id"]}
                for r in rows
                for x, y in combinations(r["responses"], 2)
            ],
        )
        return campaign
