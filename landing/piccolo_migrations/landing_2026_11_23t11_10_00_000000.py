"""Composite unique constraints and indexes for the landing tables."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-11-23T11:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "composite indexes"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="landing", description=DESCRIPTION)

    # Composite constraints and indexes Piccolo's columns cannot express.
    composite = ['CREATE INDEX event_lead_occurred ON event (lead, occurred_at)', 'CREATE INDEX event_visitor_occurred ON event (visitor, occurred_at)']

    async def create_composite():
        from piccolo.engine import engine_finder

        engine = engine_finder()
        for statement in composite:
            await engine.run_ddl(statement)

    async def drop_composite():
        from piccolo.engine import engine_finder

        engine = engine_finder()
        for name in ['event_lead_occurred', 'event_visitor_occurred']:
            await engine.run_ddl(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create_composite)
    manager.add_raw_backwards(drop_composite)


    return manager
