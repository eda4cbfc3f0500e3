"""leadkiln server: composes the domains into a web app, a worker and a CLI."""

import os

# Piccolo finds its engine and apps through this module; set before any query runs.
os.environ.setdefault("PICCOLO_CONF", "server.piccolo_conf")
