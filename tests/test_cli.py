"""The `nexus` command line's own helpers: --version, config init, completions, serve's default config,
-p/-H, and dev-cluster's demo being serve --demo's."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from nexus.cli import build_parser, main
from nexus.cli_tools import version
from nexus.core.config import load_settings


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"nexus {version()}"
    assert version()[0].isdigit()


def test_config_init_writes_a_config_that_loads_and_never_overwrites(tmp_path, capsys):
    target = tmp_path / "nexus.toml"
    assert main(["config", "init", "-o", str(target)]) == 0
    settings = load_settings(target, environ={})
    assert [b.name for b in settings.backends] == ["local-ollama"]
    target.write_text("# mine\n")
    assert main(["config", "init", "-o", str(target)]) == 2
    assert target.read_text() == "# mine\n"
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completions_name_every_subcommand(shell, capsys):
    assert main(["completions", shell]) == 0
    script = capsys.readouterr().out
    for command in ("serve", "dev-cluster", "models", "completions", "backends"):
        assert command in script
    flag = "-l " if shell == "fish" else "--"
    assert f"{flag}redis-url" in script and f"{flag}demo" in script
    if shell == "bash":
        subprocess.run(["bash", "-n"], input=script.encode(), check=True)
        # the script completes for real: subcommands at position 1, a subcommand's flags after it
        probe = script + (
            'COMP_WORDS=(nexus se); COMP_CWORD=1; _nexus; echo "${COMPREPLY[@]}"\n'
            'COMP_WORDS=(nexus serve --de); COMP_CWORD=2; _nexus; echo "${COMPREPLY[@]}"\n'
        )
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
        assert out[0].split() == ["serve"] and out[1].split() == ["--demo"]
    elif shell == "zsh" and shutil.which("zsh"):
        subprocess.run(["zsh", "-n"], input=script.encode(), check=True)


def test_serve_reads_nexus_toml_in_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["serve"]) == 2
    assert "no ./nexus.toml" in capsys.readouterr().err
    # a broken ./nexus.toml is what serve then reads (and refuses, naming the key), not the demo
    (tmp_path / "nexus.toml").write_text("[server]\nport = -1\n")
    assert main(["serve"]) == 2
    assert "nexus.toml: server.port" in capsys.readouterr().err


def test_short_port_and_host_flags():
    ns = build_parser().parse_args(["serve", "-p", "9001", "-H", "0.0.0.0"])
    assert (ns.port, ns.host) == (9001, "0.0.0.0")
    ns = build_parser().parse_args(["router", "-c", "x.toml", "-p", "9002"])
    assert ns.port == 9002


def test_module_entry_point_prints_help():
    out = subprocess.run([sys.executable, "-m", "nexus.cli", "--help"], capture_output=True, text=True, check=True)
    assert "completions" in out.stdout and "--version" in out.stdout


def test_dev_cluster_demo_is_the_serve_demo():
    from nexus.serve import DEMO_CONFIG
    from nexus.tools.devcluster import demo_cluster

    fakes, config = demo_cluster(DEMO_CONFIG)
    demo = load_settings(DEMO_CONFIG, environ={})
    assert config["routing"]["aliases"]["gpt-4"] == "gpt-4o"  # the README's example model resolves
    entries = [{"name": f.name, "url": f"http://127.0.0.1:{9000 + i}", "type": f.type, "models": list(f.models),
                **f.backend} for i, f in enumerate(fakes)]
    cluster = load_settings(None, environ={}, overrides={**config, "backends": entries})
    assert cluster.routing == demo.routing
    assert [(b.name, b.models, b.tier) for b in cluster.backends] == [(b.name, b.models, b.tier) for b in demo.backends]
