"""--shell-completion: install=bash|zsh prints a script to `eval`, uninstall=... one that removes it, query=bash is
what the script calls at each Tab (config groups, their options, config keys; Hydra's own completion code).

Hydra's scripts find an app as `python <file>.py` (a file that says @hydra.main) or an installed command; this one
is `python -m orchestrator`, so the script and the query's parsing of the line are ours."""

from __future__ import annotations

import os
import re

from core.errors import UserError
from orchestrator.compose import App, hydra_app

SHELLS = ("bash", "zsh")
PREFIX = re.compile(r"^\s*\S*python[\d.]*\s+-m\s+orchestrator(\s+|$)")
INSTALL = r"""# Tab completion for `python -m orchestrator` (config groups, options, keys)
# load it: eval "$(python -m orchestrator -sc install=bash)"
_orchestrator_complete()
{
    local words=($COMP_LINE)
    if [[ "${words[1]}" != "-m" || "${words[2]}" != "orchestrator" ]]; then
        return  # another python command: the default (file names)
    fi
    local choices=$(COMP_POINT=$COMP_POINT COMP_LINE=$COMP_LINE ${words[0]} -m orchestrator -sc query=bash 2>/dev/null)
    COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "${COMP_WORDS[$COMP_CWORD]}"))
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _orchestrator_complete python python3
"""
UNINSTALL = "complete -r python python3 2>/dev/null\nunset -f _orchestrator_complete\n"
ZSH_FIRST = "autoload -Uz bashcompinit && bashcompinit\n"  # zsh runs bash's completion functions through it


def _subcommand(overrides: list[str]) -> tuple[str, str]:
    pairs = [o.split("=", 1) for o in overrides if "=" in o]
    chosen = [(key, value) for key, value in pairs if key in ("install", "uninstall", "query")]
    if len(chosen) != 1 or chosen[0][1] not in SHELLS:
        raise UserError("--shell-completion: give one of install=SHELL, uninstall=SHELL, query=SHELL (SHELL: "
                        f"{', '.join(SHELLS)}), e.g. eval \"$(python -m orchestrator -sc install=bash)\"")
    return chosen[0]


def shell_completion(app: App, overrides: list[str]) -> None:
    command, shell = _subcommand(overrides)
    if command == "install":
        print((ZSH_FIRST if shell == "zsh" else "") + INSTALL, end="")
    elif command == "uninstall":
        print(UNINSTALL, end="")
    else:
        print(" ".join(query(app, os.environ.get("COMP_LINE", ""))))


def query(app: App, line: str) -> list[str]:
    """The completions of the last word of `line` (a whole command line as the shell has it)."""
    from hydra._internal.core_plugins.bash_completion import BashCompletion

    words = PREFIX.sub("", line)
    with hydra_app(app) as hydra:
        return BashCompletion(hydra.config_loader)._query(config_name=app.config_name, line=words)
