"""leadkiln admin."""
