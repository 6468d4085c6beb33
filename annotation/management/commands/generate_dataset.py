"""Generate a dataset of rollouts by hand-written policies: ``manage.py generate_dataset
--env Pendulum-v1 --policy random,noisy-expert,expert --episodes N --seed S --name NAME``.

The policies are annotation/rollouts.py's; the store is annotation/services/datasets.py's.
"""

from django.core.management.base import BaseCommand, CommandError

from annotation import rollouts, services
from annotation.errors import ServiceError


class Command(BaseCommand):
    help = "Roll out hand-written policies (expert, noisy-expert, random) and store a dataset."

    def add_arguments(self, parser):
        parser.add_argument("--env", required=True, choices=rollouts.ENVS)
        parser.add_argument(
            "--policy",
            required=True,
            help=f"comma-separated, from {', '.join(rollouts.POLICY_NAMES)}; "
            "the episodes are dealt round-robin across them",
        )
        parser.add_argument("--episodes", type=int, required=True, help="episodes in all")
        parser.add_argument("--seed", type=int, required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--noise",
            type=float,
            default=rollouts.DEFAULT_NOISE,
            help="noisy-expert's Gaussian action noise, as a fraction of the largest action "
            f"(default {rollouts.DEFAULT_NOISE})",
        )
        parser.add_argument(
            "--max-steps",
            type=int,
            default=None,
            help="steps per episode at most (default: the environment's own, 200 for Pendulum-v1)",
        )

    def handle(self, *args, **options):
        policies = [p.strip() for p in options["policy"].split(",") if p.strip()]
        try:
            dataset = services.dataset_generate(
                env_id=options["env"],
                policies=policies,
                episodes=options["episodes"],
                seed=options["seed"],
                name=options["name"],
                noise=options["noise"],
                max_steps=options["max_steps"],
            )
        except ServiceError as exc:
            raise CommandError(f"Nothing generated: {exc.message}") from exc
        returns = ", ".join(
            f"{policy} {value:.1f}" for policy, value in dataset.metadata["mean_returns"].items()
        )
        self.stdout.write(
            f"Generated dataset {dataset.name!r} (id {dataset.pk}): "
            f"{dataset.transition_count} transitions, {dataset.episode_count} episodes; "
            f"mean return {returns}."
        )
