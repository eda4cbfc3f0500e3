"""Admin forms: one module per action the admin offers beside its tables."""
