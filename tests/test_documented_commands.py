"""The commands the READMEs show are the commands that exist: users copy them.

Every ``ana-*`` command line in the READMEs (code blocks, continuation lines joined, and inline code) composes
with the packaged config the way its console command composes it, placeholders such as ``<I3A training
folder>`` and shell substitutions standing in as a path; a sweep value (``range(5)``, ``a,b``) stands in by its
first item. Commands elided in prose (``…``) are skipped. And every ``--flag`` and subcommand given to an
``experiments/…py`` script exists in that script. The examples each command's ``--help`` shows compose the same
way, and ``--help`` shows them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO, compose

DOCS = [
    REPO / "README.md",
    REPO / "experiments" / "README.md",
    *sorted((REPO / "experiments").glob("*/README.md")),
]
CONFIG_OF = {
    "ana-train": "train",
    "ana-eval": "eval",
    "ana-predict": "predict",
    "ana-export": "export",
    "ana-compare": "compare",
    "ana-synth": "synth",
    "ana-app": "app",
    "ana-stylize": "stylize",
}


def _lines(path: Path) -> list[tuple[int, str, bool]]:
    """(line number, text, inside a code block), with backslash-continued lines joined."""
    out, block, lines, i = [], False, path.read_text().split("\n"), 0
    while i < len(lines):
        number, line = i + 1, lines[i]
        if line.strip().startswith("```"):
            block = not block
            i += 1
            continue
        while block and line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        out.append((number, line, block))
        i += 1
    return out


def _commands(pattern: str) -> list[tuple[str, str]]:
    """(``file:line``, command) for each command starting with ``pattern`` in the READMEs."""
    found = []
    for path in DOCS:
        for number, line, block in _lines(path):
            texts = [line.strip()] if block and re.match(pattern, line.strip()) else []
            texts += [t for t in re.findall(r"`([^`]*)`", line) if re.match(pattern, t)]
            for text in texts:
                text = re.split(r"\s+#\s", text)[0]
                if "…" not in text and "..." not in text:
                    found.append((f"{path.relative_to(REPO)}:{number}", text))
    return found


def _stand_ins(text: str) -> str:
    text = re.sub(r"\$\([^)]*\)|\$\{?\w+\}?", "X", text)
    for _ in range(3):
        text = re.sub(r"<[^<>]*>", "X", text)
    return text


def _compose_args(text: str) -> tuple[str, list[str]]:
    tokens = shlex.split(_stand_ins(text))
    name, overrides, it = CONFIG_OF[tokens[0]], [], iter(tokens[1:])
    for token in it:
        if token == "--config-name":
            name = next(it)
        elif token.startswith("--config-name="):
            name = token.split("=", 1)[1]
        elif "=" in token and not token.startswith(("-", "[")):
            key, value = token.split("=", 1)
            sweep = re.fullmatch(r"range\((\d+).*\)", value)
            if sweep:
                value = sweep.group(1)
            elif "," in value and not value.startswith(("[", "{", "'", '"')):
                value = value.split(",")[0]
            overrides.append(f"{key}={value}")
    return name, overrides


CLI_COMMANDS = [c for c in _commands(r"ana-\w+ ") if c[1].split()[0] in CONFIG_OF]


def test_the_readmes_show_commands():
    assert len(CLI_COMMANDS) > 50 and any("experiment=i3a_cells" in c for _, c in CLI_COMMANDS)


@pytest.mark.parametrize("where,command", CLI_COMMANDS, ids=[w for w, _ in CLI_COMMANDS])
def test_a_documented_command_composes(where, command, tmp_path):
    name, overrides = _compose_args(command)
    try:
        compose(name, overrides, output_dir=tmp_path / "runs" / "x")
    except Exception as e:  # noqa: BLE001 - the message names the key that does not exist
        pytest.fail(f"{where}: `{command}` does not compose: {type(e).__name__}: {e}")


def _help_commands() -> list[tuple[str, str]]:
    """(``conf/<name>.yaml``, command) for each example under "Examples:" in a config's ``hydra.help.header``."""
    from omegaconf import OmegaConf

    found = []
    for path in sorted((REPO / "conf").glob("*.yaml")):
        header = OmegaConf.select(OmegaConf.load(path), "hydra.help.header") or ""
        examples = header.split("Examples:", 1)[1] if "Examples:" in header else ""
        for line in examples.splitlines():
            text = re.split(r"\s+#\s", line.strip())[0]
            if re.match(r"ana-\w+", text):
                found.append((f"conf/{path.name}", text))
    return found


HELP_COMMANDS = _help_commands()


def test_every_command_has_help_with_examples():
    configs = {where for where, _ in HELP_COMMANDS}
    assert configs >= {f"conf/{name}.yaml" for name in CONFIG_OF.values()}
    assert configs >= {"conf/eval_hierarchy.yaml", "conf/eval_episodes.yaml"}


@pytest.mark.parametrize("where,command", HELP_COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in HELP_COMMANDS])
def test_a_help_example_composes(where, command, tmp_path):
    test_a_documented_command_composes(where, command, tmp_path)


@pytest.mark.parametrize("command", sorted(CONFIG_OF))
def test_help_says_what_the_command_does(command, monkeypatch, capsys):
    import importlib
    import sys

    module = importlib.import_module(f"ana_lightning.cli.{command.removeprefix('ana-')}")
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{command}: ") and "Examples:" in out and "powered by Hydra" not in out
    assert f"{command} --cfg job" in out  # the footer names the command
    # commands that read a model list their own keys, not the training config groups
    groups = "== Configuration groups ==" in out
    assert groups == (command in {"ana-train", "ana-eval", "ana-stylize", "ana-synth"})


SCRIPT_COMMANDS = [
    (where, m.group(1), m.group(2))
    for where, text in _commands(r"python3? experiments/")
    for m in [re.match(r"python3? (experiments/[\w/]+\.py)(.*)", text)]
    if m
]


@pytest.mark.parametrize("where,script,args", SCRIPT_COMMANDS, ids=[w for w, _, _ in SCRIPT_COMMANDS])
def test_a_documented_experiment_script_has_its_flags(where, script, args):
    path = REPO / script
    assert path.is_file(), f"{where}: no script {script}"
    source = path.read_text()
    for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", args):
        assert f'"{flag}"' in source or f"'{flag}'" in source, f"{where}: {script} has no {flag}"
    first = args.split()[0] if args.split() else ""
    if "add_subparsers" in source and re.fullmatch(r"[a-z_]+", first):
        assert f'"{first}"' in source, f"{where}: {script} has no subcommand {first}"
    if "choices=[" in source and re.fullmatch(r"[a-z_]+", first) and "add_subparsers" not in source:
        assert f'"{first}"' in source, f"{where}: {script} has no check {first}"


def _markdown_files() -> list[Path]:
    skip = {"outputs", "multirun", "data", "node_modules", "wandb"}
    return sorted(
        p
        for p in REPO.rglob("*.md")
        if not any(part.startswith(".") or part in skip for part in p.relative_to(REPO).parts[:-1])
    )


def _relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of each ``[text](target)`` / ``![alt](target)`` outside code blocks that is a path."""
    found = []
    for number, line, block in _lines(path):
        if block:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            found.append((number, target.split("#")[0]))
    return found


def test_relative_links_in_the_markdown_reach_a_file():
    """A results page, README or model card that links a picture or a file links one that is in the repository
    (a CV summary copied from its sweep folder once linked a confusion matrix left behind)."""
    files = _markdown_files()
    assert any(p.parent.name.startswith("round") for p in files), "no results pages found: the glob is wrong"
    broken = [
        f"{p.relative_to(REPO)}:{n}: {t}"
        for p in files
        for n, t in _relative_links(p)
        if not (p.parent / t).exists()
    ]
    assert not broken, "links to files that are not there:\n" + "\n".join(broken)


def test_a_missing_link_target_is_found(tmp_path):
    page = tmp_path / "summary.md"
    page.write_text(
        "![m](gone.png)\n```\n![not a link](in_a_code_block.png)\n```\n[web](https://example.org) [up](#top)\n"
    )
    assert _relative_links(page) == [(1, "gone.png")]
