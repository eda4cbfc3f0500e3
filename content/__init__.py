"""leadkiln content."""
