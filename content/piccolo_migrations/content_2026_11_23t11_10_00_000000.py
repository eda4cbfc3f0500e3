"""Composite unique constraints and indexes for the content tables."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-11-23T11:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "composite indexes"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="content", description=DESCRIPTION)

    # Composite constraints and indexes Piccolo's columns cannot express.
    composite = ['CREATE UNIQUE INDEX delivery_enrollment_step_uniq ON delivery (enrollment, step)', 'CREATE UNIQUE INDEX enrollment_lead_chain_uniq ON enrollment (lead, chain)', 'CREATE UNIQUE INDEX offer_chain_kind_uniq ON offer (chain, kind)', 'CREATE UNIQUE INDEX step_chain_position_uniq ON step (chain, position)', 'CREATE INDEX enrollment_status_due ON enrollment (status, due_at)']

    async def create_composite():
        from piccolo.engine import engine_finder

        engine = engine_finder()
        for statement in composite:
            await engine.run_ddl(statement)

    async def drop_composite():
        from piccolo.engine import engine_finder

        engine = engine_finder()
        for name in ['delivery_enrollment_step_uniq', 'enrollment_lead_chain_uniq', 'offer_chain_kind_uniq', 'step_chain_position_uniq', 'enrollment_status_due']:
            await engine.run_ddl(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create_composite)
    manager.add_raw_backwards(drop_composite)


    return manager
