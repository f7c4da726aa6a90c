"""job=pipeline: stages of other kinds as one tracked run, run through the orchestrator (jobs/pipeline/driver.py)."""
