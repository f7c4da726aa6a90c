import atexit
import os
import sys

from orchestrator.cli import main

code = main()
# Done and flushed: run the exit handlers (logging's flush among them), then leave without the interpreter's
# teardown of torch, transformers, Ray and MLflow modules (about 2 s per job on a 2-core machine, for nothing).
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
