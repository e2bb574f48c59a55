"""Data: parallel SFT records, the prepare stage, benchmark specs and loaders."""
