"""Composite unique constraints and indexes for the scoring tables."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-11-23T11:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "composite indexes"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="scoring", description=DESCRIPTION)

    # Composite constraints and indexes Piccolo's columns cannot express.
    composite = ['CREATE UNIQUE INDEX score_lead_topic_uniq ON score (lead, topic)', 'CREATE INDEX score_topic_combined ON score (topic, combined)', 'CREATE INDEX score_history_lead_topic ON score_history (lead, topic, computed_at)']

    async def create_composite():
        from piccolo.engine import engine_finder

        engine = engine_finder()
        for statement in composite:
            await engine.run_ddl(statement)

    async def drop_composite():
        from piccolo.engine import engine_finder

        engine = engine_finder()
        for name in ['score_lead_topic_uniq', 'score_topic_combined', 'score_history_lead_topic']:
            await engine.run_ddl(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create_composite)
    manager.add_raw_backwards(drop_composite)


    return manager
