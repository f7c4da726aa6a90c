"""Hydra's own flags on `python -m orchestrator` (orchestrator/flags.py, commands.py, completion.py), through the
real CLI entry point in this process; a mistake in any of them is one `error:` line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

USER_JOB = """# @package _global_
defaults:
  - override /job: inspect
job:
  name: my-inspect
model:
  freeze: [embeddings]
tracking:
  enabled: false  # the store's creation is most of such a run's time; test_sweep.py checks runs
"""


def test_help_lists_the_flags_the_groups_and_the_job_files(cli_in_process, storage: Path) -> None:
    result = cli_in_process(["--help"], storage)
    assert result.returncode == 0, result.stderr
    for text in ("usage: python -m orchestrator", "--multirun,-m", "--config-dir,-cd", "--shell-completion,-sc",
                 "--cfg,-c", "--info,-i", "--quiet,-q", "job: evaluate, inspect", "model: hf, llava15_7b",
                 "experiment: demo_pipeline, demo_quantize_gptq", "== Config ==", "max_steps: 20",
                 "+experiment=demo_sft"):
        assert text in result.stdout, (text, result.stdout[:3000])
    quantize = cli_in_process(["-h", "job=quantize", "quant=gptq"], storage)  # the config shown is the composed one
    assert "algorithm: gptq" in quantize.stdout
    assert not storage.exists()  # nothing ran


def test_cfg_job_hydra_all_package_and_resolve(cli_in_process, storage: Path) -> None:
    hydra = cli_in_process(["--cfg", "hydra"], storage)
    assert hydra.returncode == 0 and hydra.stdout.startswith("hydra:\n") and "sweeper:" in hydra.stdout
    assert "kind: sft" not in hydra.stdout and "${now:" in hydra.stdout  # unresolved without --resolve
    resolved = cli_in_process(["--cfg", "hydra", "--resolve"], storage)
    assert "${" not in resolved.stdout and "name: orchestrator" in resolved.stdout
    both = cli_in_process(["--cfg", "all"], storage)
    assert "\nhydra:\n" in both.stdout and "kind: sft" in both.stdout
    optim = cli_in_process(["-c", "job", "-p", "trainer.optim", "trainer.optim.lr=0.5"], storage)
    assert optim.stdout.startswith("# @package trainer.optim\n") and "lr: 0.5" in optim.stdout
    quiet = cli_in_process(["--quiet", "--cfg", "job", "-p", "log"], storage)
    assert "quiet: true" in quiet.stdout and "format: text" in quiet.stdout


def test_info_shows_hydras_defaults_list(cli_in_process, storage: Path) -> None:
    result = cli_in_process(["--info", "defaults", "+experiment=demo_sft"], storage)
    assert result.returncode == 0, result.stderr
    assert "experiment/demo_sft" in result.stdout and "hydra/help/orchestrator" in result.stdout


def test_a_job_file_from_the_users_own_directory_runs(cli_in_process, storage: Path, tmp_path: Path) -> None:
    """--config-dir: `<dir>/experiment/<name>.yaml`, run as +experiment=<name> (job=inspect: no Ray needed)."""
    (tmp_path / "jobs" / "experiment").mkdir(parents=True)
    (tmp_path / "jobs" / "experiment" / "mine.yaml").write_text(USER_JOB)
    shown = cli_in_process(["--config-dir", str(tmp_path / "jobs"), "+experiment=mine", "--cfg", "job"], storage)
    assert "kind: inspect" in shown.stdout and "- embeddings" in shown.stdout, shown.stderr
    result = cli_in_process(["-cd", str(tmp_path / "jobs"), "+experiment=mine"], storage)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class: Qwen3ForCausalLM" in result.stdout and "\nstatus: FINISHED\n" in result.stdout
    assert "trainable_params: 9441152" in result.stdout  # the embeddings frozen, as the file says
    assert "RESULT status: FINISHED" in (storage / "my-inspect" / "logs" / "job.log").read_text()


def test_config_path_and_name_pick_a_users_root_config(cli_in_process, storage: Path, tmp_path: Path) -> None:
    """A root config of the user's own builds on conf/config.yaml (still on the search path)."""
    (tmp_path / "root.yaml").write_text("defaults:\n  - config\n  - _self_\ntrainer:\n  max_steps: 3\n")
    result = cli_in_process(["--config-path", str(tmp_path), "--config-name", "root", "--cfg", "job"], storage)
    assert result.returncode == 0, result.stderr
    assert "max_steps: 3" in result.stdout and "kind: sft" in result.stdout
    (tmp_path / "bare.yaml").write_text("trainer:\n  max_steps: 3\n")
    bare = cli_in_process(["-cp", str(tmp_path), "-cn", "bare", "--cfg", "job"], storage)
    assert bare.returncode == 2 and len(bare.stderr.splitlines()) == 1, bare.stderr  # job.storage=: not its key
    from core.errors import ConfigError
    from orchestrator.compose import App, compose, to_spec

    with pytest.raises(ConfigError, match="--config-name: the root config's defaults list must start with"):
        to_spec(compose([], App(str(tmp_path), "bare")))


@pytest.mark.parametrize(("args", "message"), [
    (["--bogus"], "unrecognized arguments: --bogus (try --help)"),
    (["--cfg", "nope"], "argument --cfg/-c: invalid choice: 'nope'"),
    (["--resolve"], "--resolve: only with --cfg or --help"),
    (["-m", "--cfg", "job"], "--multirun and --cfg: give only one of"),
    (["-sc"], "--shell-completion: give one of install=SHELL"),
    (["-sc", "install=tcsh"], "--shell-completion: give one of install=SHELL"),
    (["--config-dir", "/no/such/dir"], "config error: --config-dir: /no/such/dir: no such directory"),
    (["--config-name", "nope"], "config error: --config-name: Cannot find primary config 'nope'"),
    (["--experimental-rerun", "x.pickle"], "--experimental-rerun: not supported"),
    (["quant.format=w4g128,w8a8"], "config error: overrides: quant.format=w4g128,w8a8: several values: add -m"),
    (["--cfg", "job", "-p", "trainer.nope"], "--package: 'trainer.nope' not found"),
])
def test_a_bad_flag_is_one_line_and_exit_2(args: list[str], message: str, cli_in_process, storage: Path) -> None:
    result = cli_in_process(args, storage)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr


def test_completion_script_and_its_queries(cli_in_process, storage: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bash = cli_in_process(["-sc", "install=bash"], storage)
    assert bash.returncode == 0 and "complete -o nospace -o default -F _orchestrator_complete python" in bash.stdout
    assert cli_in_process(["-sc", "install=zsh"], storage).stdout.startswith("autoload -Uz bashcompinit")
    assert "complete -r python" in cli_in_process(["-sc", "uninstall=bash"], storage).stdout
    cases = {"python -m orchestrator model=": "model=llava_tiny", "python -m orchestrator +experiment=demo_s":
             "+experiment=demo_sft", ".venv/bin/python -m orchestrator job=quantize quant.fo": "quant.format="}
    for line, expected in cases.items():
        monkeypatch.setenv("COMP_LINE", line)
        result = cli_in_process(["-sc", "query=bash"], storage)
        assert expected in result.stdout.split(), (line, result.stdout)


def test_completion_in_bash() -> None:
    """The emitted script loaded into a real bash: Tab after `model=` offers the model configs."""
    python = sys.executable
    script = (f'eval "$({python} -m orchestrator -sc install=bash)"; '
              f'COMP_LINE="{python} -m orchestrator model=q"; COMP_POINT=${{#COMP_LINE}}; '
              f'COMP_WORDS=({python} -m orchestrator model=q); COMP_CWORD=3; '
              '_orchestrator_complete; echo "${COMPREPLY[@]}"')
    result = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["model=qwen3_1p7b", "model=qwen3_tiny"], result.stdout + result.stderr
