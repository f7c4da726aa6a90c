"""Control plane: compose and validate a job spec, track it in MLflow, place it on Ray, run it."""
