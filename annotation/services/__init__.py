"""Every write of the annotation app, by concern:

- `leases`: leasing the next pair, judgments, skips and renewals (the lease engine);
- `campaigns`: campaigns and their members;
- `imports`: bulk imports of prompts, items and pairs;
- `datasets`: RL datasets imported from files, Minari or generated rollouts (field files plus
  their rows), and the sweep of what a killed import left behind;
- `trajectories`: trajectory campaigns cut from a stored dataset;
- `clips`: rendering segments' clips on the media workers, and pairs' readiness.
"""

from .campaigns import campaign_create, campaign_role_set, membership_add
from .clips import campaign_clips_request, clip_uploaded, clips_request, clips_rerender
from .datasets import (
    dataset_generate,
    dataset_import,
    dataset_name_clean,
    dataset_staging_sweep,
)
from .imports import items_bulk_create, messages_normalise, pairs_bulk_create, prompts_bulk_create
from .leases import (
    Submitted,
    assignment_lease_next,
    assignment_renew,
    assignments_release,
    choices_canonical,
    judgment_submit,
    judgment_submit_and_lease_next,
    skip_create,
)
from .trajectories import TrajectorySource, campaign_create_from_dataset, trajectory_cut

__all__ = [
    "campaign_clips_request",
    "clip_uploaded",
    "clips_request",
    "clips_rerender",
    "Submitted",
    "TrajectorySource",
    "campaign_create_from_dataset",
    "trajectory_cut",
    "assignment_lease_next",
    "assignment_renew",
    "assignments_release",
    "campaign_create",
    "campaign_role_set",
    "choices_canonical",
    "dataset_generate",
    "dataset_import",
    "dataset_name_clean",
    "dataset_staging_sweep",
    "items_bulk_create",
    "judgment_submit",
    "judgment_submit_and_lease_next",
    "membership_add",
    "messages_normalise",
    "pairs_bulk_create",
    "prompts_bulk_create",
    "skip_create",
]
