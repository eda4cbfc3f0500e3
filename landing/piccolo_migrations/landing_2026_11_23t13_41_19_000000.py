"""One preference row per lead and topic (a raw step, after the table exists)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-11-23T13:41:19:000000"
VERSION = "1.38.0"
DESCRIPTION = "topic preference unique per lead and topic"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="landing", description=DESCRIPTION)

    async def create_index():
        from piccolo.engine import engine_finder

        await engine_finder().run_ddl(
            "CREATE UNIQUE INDEX topic_preference_lead_topic_uniq ON topic_preference (lead, topic)"
        )

    async def drop_index():
        from piccolo.engine import engine_finder

        await engine_finder().run_ddl("DROP INDEX IF EXISTS topic_preference_lead_topic_uniq")

    manager.add_raw(create_index)
    manager.add_raw_backwards(drop_index)
    return manager
