"""leadkiln server."""
