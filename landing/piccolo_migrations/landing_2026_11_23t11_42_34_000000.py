"""Indexes for the lead columns added just before (a raw step runs before column changes)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-11-23T11:42:34:000000"
VERSION = "1.38.0"
DESCRIPTION = "lead external id unique, lead topic index"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="landing", description=DESCRIPTION)

    # SQLite cannot add a UNIQUE column: the constraint is a unique index (NULLs may repeat).
    async def create_indexes():
        from piccolo.engine import engine_finder

        engine = engine_finder()
        await engine.run_ddl("CREATE UNIQUE INDEX lead_external_id_uniq ON lead (external_id)")
        await engine.run_ddl("CREATE INDEX lead_topic_idx ON lead (topic)")

    async def drop_indexes():
        from piccolo.engine import engine_finder

        engine = engine_finder()
        for name in ("lead_external_id_uniq", "lead_topic_idx"):
            await engine.run_ddl(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create_indexes)
    manager.add_raw_backwards(drop_indexes)

    return manager
