"""Create a trajectory campaign from a stored dataset:
``manage.py campaign_from_dataset DATASET --slug SLUG --segment-length 20 --pairs 500``.

The same options as the API's ``"source"`` (annotation/services/trajectories.py); clips are
rendered by the media workers afterwards, and pairs are leased once both clips are ready.
"""

from django.core.management.base import BaseCommand, CommandError

from annotation import segments, services
from annotation.errors import ServiceError
from annotation.models import Campaign


class Command(BaseCommand):
    help = "Create a trajectory campaign whose pairs are segments of a stored dataset."

    def add_arguments(self, parser):
        parser.add_argument("dataset", help="the dataset's name")
        parser.add_argument("--slug", required=True)
        parser.add_argument("--name", help="the campaign's name (default: the slug)")
        parser.add_argument("--segment-length", type=int, required=True)
        parser.add_argument("--stride", type=int, help="default: the segment length")
        parser.add_argument("--pairs", type=int, required=True)
        parser.add_argument("--sampling", choices=segments.SAMPLINGS, default="random")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--judgments-per-pair", type=int, default=3)
        parser.add_argument("--instructions", default="")
        parser.add_argument("--activate", action="store_true", help="open it to annotators")

    def handle(self, *args, **options):
        source = {
            "dataset": options["dataset"],
            "segment_length": options["segment_length"],
            "pairs": options["pairs"],
            "sampling": options["sampling"],
            "seed": options["seed"],
        }
        if options["stride"] is not None:
            source["stride"] = options["stride"]
        try:
            campaign = services.campaign_create_from_dataset(
                name=options["name"] or options["slug"],
                slug=options["slug"],
                source=source,
                judgments_per_pair=options["judgments_per_pair"],
                instructions=options["instructions"],
                status=Campaign.Status.ACTIVE if options["activate"] else Campaign.Status.DRAFT,
            )
        except ServiceError as exc:
            where = f" ({exc.field})" if exc.field else ""
            raise CommandError(f"Nothing created{where}: {exc.message}") from exc
        self.stdout.write(
            f"Created campaign {campaign.slug!r}: {campaign.items.count()} segments, "
            f"{campaign.pairs.count()} pairs; clips are being rendered."
        )
