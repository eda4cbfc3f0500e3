"""Piccolo app for the hand-off tables: hot-lead letters to sales and CRM webhooks."""

import os

from piccolo.conf.apps import AppConfig, table_finder

CURRENT_DIRECTORY = os.path.dirname(os.path.abspath(__file__))

APP_CONFIG = AppConfig(
    app_name="admin",
    migrations_folder_path=os.path.join(CURRENT_DIRECTORY, "piccolo_migrations"),
    table_classes=table_finder(modules=["admin.tables"], exclude_imported=True),
    migration_dependencies=["landing.piccolo_app"],
    commands=[],
)
