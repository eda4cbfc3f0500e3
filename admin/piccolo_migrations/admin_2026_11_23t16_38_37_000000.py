"""One webhook delivery per event per endpoint, however often the hand-off job runs."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-11-23T16:38:37:000000"
VERSION = "1.38.0"
DESCRIPTION = "webhook_delivery unique on endpoint and event key"

_INDEXES = {
    "webhook_delivery_endpoint_event_uniq":
        "CREATE UNIQUE INDEX webhook_delivery_endpoint_event_uniq ON webhook_delivery (endpoint, event_key)",
}


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="admin", description=DESCRIPTION)

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
