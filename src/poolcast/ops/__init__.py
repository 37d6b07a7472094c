"""Running and checking the pipeline: validate, report, synthetic data, the plain reference."""
