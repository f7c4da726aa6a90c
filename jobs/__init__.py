"""Data plane: one folder per job kind, each with its config schema, driver and Ray workers."""
