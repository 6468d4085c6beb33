"""Triggers that tell every web process when a cached row changed (feedback_app/process_cache.py).

Statement-level, so a bulk write sends one notification per table; PostgreSQL delivers them on
commit and folds duplicates within a transaction. Only on PostgreSQL: the embedded SQLite mode
caches nothing."""

from django.db import migrations

# (table, events): inserts matter only where a cached value is a list (criteria, roles); a
# new token or campaign is simply not in the cache yet.
WATCHED = (
    ("auth_user", "UPDATE OR DELETE OR TRUNCATE"),
    ("authtoken_token", "UPDATE OR DELETE OR TRUNCATE"),
    ("annotation_campaign", "UPDATE OR DELETE OR TRUNCATE"),
    ("annotation_criterion", "INSERT OR UPDATE OR DELETE OR TRUNCATE"),
)

FUNCTION = """
CREATE OR REPLACE FUNCTION feedback_notify_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('feedback_changed', TG_TABLE_NAME);
  RETURN NULL;
END $$;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(FUNCTION)
    for table, events in WATCHED:
        schema_editor.execute(
            f"CREATE TRIGGER {table}_notify_changed AFTER {events} ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION feedback_notify_changed()"
        )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, _ in WATCHED:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_notify_changed ON {table}")
    schema_editor.execute("DROP FUNCTION IF EXISTS feedback_notify_changed()")


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0006_read_indexes"),
        ("authtoken", "0004_alter_tokenproxy_options"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
