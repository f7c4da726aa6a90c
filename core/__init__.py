"""Services shared by the control plane (orchestrator/) and the data plane (jobs/):
models, datasets, storage, cluster placement, registries and errors."""
