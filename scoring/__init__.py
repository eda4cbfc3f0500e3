"""leadkiln scoring."""
