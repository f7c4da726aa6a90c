"""The MLflow UI page of a finished run, opened in headless Chromium (Debian's, driven by Playwright):
its metrics charts and its artifacts are on the page. Saves screenshots next to the test's tmp dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.tracking import TrackingConfig, start_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI installs chromium (.ci/run) and must run this; elsewhere a machine without it skips, saying why
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                                  reason="needs Debian's chromium: apt-get install chromium")]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple[Path, str]:
    """A run written through the project's tracking layer: metrics over steps, text and JSON artifacts."""
    run = start_run(TrackingConfig(experiment="ui-test"), tmp_path, "ui-run", {"job.kind": "sft"})
    for step in range(1, 11):
        run.log_metrics({"loss": 5.0 / step, "grad_norm": 1.0 + 1.0 / step}, step)
    run.log_text("Qwen3ForCausalLM(...)", "model/tree.txt")
    run.log_dict({"trainer": {"max_steps": 10}}, "spec/resolved.json")
    run.end("FINISHED")
    return tmp_path, run.run_id


@pytest.fixture
def mlflow_server(finished_run):
    storage, _ = finished_run
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
           f"sqlite:///{storage / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "mlflow server did not come up"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 9)


def test_run_page_shows_metric_charts_and_artifacts(finished_run, mlflow_server, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    storage, run_id = finished_run
    experiment_id = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}").get_run(run_id).info.experiment_id
    base = f"{mlflow_server}/#/experiments/{experiment_id}/runs/{run_id}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/model-metrics")
        expect(page.get_by_text("ui-run").first).to_be_visible(timeout=60_000)
        for metric in ("loss", "grad_norm"):  # one chart card per metric
            expect(page.get_by_text(metric, exact=True).first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(tmp_path / "mlflow-run-metrics.png"))
        page.goto(f"{base}/artifacts")
        for folder in ("model", "spec"):
            expect(page.get_by_text(folder, exact=True).first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(tmp_path / "mlflow-run-artifacts.png"))
        browser.close()
    assert (tmp_path / "mlflow-run-metrics.png").stat().st_size > 20_000
    print(f"screenshots: {tmp_path}/mlflow-run-*.png")
