"""Migration 0009 on a database with trajectory pairs from before clips had a state: pairs
whose items both have an uploaded clip stay leasable, the others stop being leased."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("annotation", "0008_datasets")]
AFTER = [("annotation", "0009_trajectory_campaigns")]


@pytest.mark.django_db(transaction=True)
def test_existing_trajectory_pairs_without_both_clips_become_unready():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    Campaign, Item, Pair = (old.get_model("annotation", m) for m in ("Campaign", "Item", "Pair"))
    traj = Campaign.objects.create(name="t", slug="t", kind="trajectory")
    text = Campaign.objects.create(name="x", slug="x", kind="text")
    clipped = [Item.objects.create(campaign=traj, clip=f"clips/{n}.mp4") for n in range(3)]
    bare = Item.objects.create(campaign=traj)
    both = Pair.objects.create(campaign=traj, item_a=clipped[0], item_b=clipped[1])
    one = Pair.objects.create(campaign=traj, item_a=clipped[2], item_b=bare)
    t1, t2 = (Item.objects.create(campaign=text, content=c) for c in "ab")
    words = Pair.objects.create(campaign=text, item_a=t1, item_b=t2)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    Item, Pair = new.get_model("annotation", "Item"), new.get_model("annotation", "Pair")
    ready = dict(Pair.objects.values_list("id", "ready"))
    assert ready == {both.pk: True, one.pk: False, words.pk: True}
    assert Item.objects.get(pk=bare.pk).clip_status == ""
    assert Item.objects.get(pk=clipped[0].pk).clip_status == "ready"
    # Rows inserted with SQL (benchmark seeds) need not name the new columns; the app sets
    # `ready` itself (pairs_prepare).
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO annotation_pair (campaign_id, item_a_id, item_b_id, judgment_count,"
            " group_key, spread_rank, created_at) VALUES (%s, %s, %s, 0, 0, 0, now())"
            " RETURNING ready",
            [traj.pk, clipped[0].pk, bare.pk],
        )
        assert cursor.fetchone() == (True,)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
