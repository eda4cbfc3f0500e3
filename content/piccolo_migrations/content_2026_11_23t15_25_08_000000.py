"""One waiting row per lead and topic; the frequency cap reads a lead's recent letters."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-11-23T15:25:08:000000"
VERSION = "1.38.0"
DESCRIPTION = "chain_wait unique, delivery by lead and time"

_INDEXES = {
    "chain_wait_lead_topic_uniq": "CREATE UNIQUE INDEX chain_wait_lead_topic_uniq ON chain_wait (lead, topic)",
    "delivery_lead_reserved": "CREATE INDEX delivery_lead_reserved ON delivery (lead, reserved_at)",
}


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="content", description=DESCRIPTION)

    async def create():
        from piccolo.engine import engine_finder

        for statement in _INDEXES.values():
            await engine_finder().run_ddl(statement)

    async def drop():
        from piccolo.engine import engine_finder

        for name in _INDEXES:
            await engine_finder().run_ddl(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager
