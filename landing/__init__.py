"""leadkiln landing."""
