"""leadkiln workers."""
