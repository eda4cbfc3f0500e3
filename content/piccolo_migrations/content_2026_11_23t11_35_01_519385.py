from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from enum import Enum
from piccolo.columns.column_types import Varchar

ID = "2026-11-23T11:35:01:519385"
VERSION = "1.38.0"
DESCRIPTION = "Delivery status: claimed before SMTP, sending during it"


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="content", description=DESCRIPTION
    )

    manager.alter_column(
        table_class_name="Delivery",
        tablename="delivery",
        column_name="status",
        db_column_name="status",
        params={
            "choices": Enum(
                "DeliveryStatus",
                {
                    "claimed": "claimed",
                    "sending": "sending",
                    "sent": "sent",
                    "failed": "failed",
                    "bounced": "bounced",
                    "unknown": "unknown",
                },
            ),
        },
        old_params={
            "choices": Enum(
                "DeliveryStatus",
                {
                    "sending": "sending",
                    "sent": "sent",
                    "failed": "failed",
                    "bounced": "bounced",
                    "suppressed": "suppressed",
                    "unknown": "unknown",
                },
            ),
        },
        column_class=Varchar,
        old_column_class=Varchar,
        schema=None,
    )

    return manager
