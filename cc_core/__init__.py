"""CC-Tuning pipeline."""
