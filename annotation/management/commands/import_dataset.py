"""Import an RL dataset: ``manage.py import_dataset PATH_OR_ID --format d4rl|npz|minari
--name NAME``.

For ``minari``, PATH_OR_ID is a local Minari dataset directory or a dataset id under
MINARI_DATASETS_PATH; nothing is downloaded. The reading and checks are
annotation/dataset_io.py's, the write annotation/services/datasets.py's.
"""

from django.core.management.base import BaseCommand, CommandError

from annotation import dataset_io, services
from annotation.errors import ServiceError


class Command(BaseCommand):
    help = (
        "Import a D4RL-layout HDF5 file, an .npz archive or a local Minari dataset "
        "(directory or id) as a dataset."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help="a file; for --format minari a directory or dataset id")
        parser.add_argument("--format", required=True, choices=dataset_io.FORMATS)
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--env",
            default="",
            help="environment id, e.g. hopper-medium-v2 (minari: the dataset's own by default)",
        )

    def handle(self, *args, **options):
        try:
            dataset = services.dataset_import(
                path=options["path"],
                source_format=options["format"],
                name=options["name"],
                env_id=options["env"],
            )
        except ServiceError as exc:
            raise CommandError(f"Nothing imported: {exc.message}") from exc
        self.stdout.write(
            f"Imported dataset {dataset.name!r} (id {dataset.pk}): "
            f"{dataset.transition_count} transitions, {dataset.episode_count} episodes."
        )
