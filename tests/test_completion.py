"""`paychan completion bash|zsh`: the script completes commands, options and their values in
a real bash (`complete`, `compgen`)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from bitcoind_paychan.cli import parser
from bitcoind_paychan.completion import script


def complete(line: str, tmp_path: Path) -> list[str]:
    """What bash offers for the last word of `line` (a trailing space: a new word)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    program = tmp_path / "script" / "paychan.bash"
    program.parent.mkdir(exist_ok=True)
    program.write_text(script(parser(), "bash"))
    array = " ".join(shlex.quote(w) for w in words)
    shell = (f"cd {shlex.quote(str(tmp_path))} && source {program} && "
             f"complete -p paychan && COMP_WORDS=({array}) && COMP_CWORD={len(words) - 1} && "
             "_paychan && printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "--norc", "-c", shell], capture_output=True, text=True,
                          timeout=30, check=True)
    registered, *offered = done.stdout.splitlines()
    assert registered == "complete -F _paychan paychan"
    return sorted(w for w in offered if w)


@pytest.mark.parametrize(("line", "expected"), [
    ("paychan getin", ["getinfo"]),
    ("paychan list", ["listchannels", "listpayments"]),
    ("paychan --js", ["--json"]),
    ("paychan listchannels o", ["open"]),
    ("paychan --config x.yaml --json pay self 1 --re", ["--repeat"]),
    ("paychan demo --version ", ["1", "2", "3", "4"]),
    ("paychan completion ", ["bash", "zsh"]),
    ("paychan --timeout 5 cl", ["close"]),
])
def test_bash_completes_commands_options_and_values(line: str, expected: list[str],
                                                    tmp_path: Path) -> None:
    assert complete(line, tmp_path) == expected


def test_config_completes_file_names(tmp_path: Path) -> None:
    (tmp_path / "paychan.yaml").write_text("")
    assert complete("paychan --config payc", tmp_path) == ["paychan.yaml"]
    assert complete("paychan --config scr", tmp_path) == ["script"]
    assert complete("paychan getinfo --config payc", tmp_path) == ["paychan.yaml"]


def test_zsh_uses_the_bash_function_through_bashcompinit() -> None:
    zsh, bash = script(parser(), "zsh"), script(parser(), "bash")
    assert zsh.endswith(bash)
    assert "autoload -U +X bashcompinit && bashcompinit" in zsh


def test_the_cli_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    from bitcoind_paychan.cli import main

    assert main(["completion", "bash"]) == 0
    assert capsys.readouterr().out == script(parser(), "bash")
