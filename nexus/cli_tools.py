"""Small `nexus` commands that need no cluster: `--version`, `models`, `config init`, `completions`.

`nexus models` asks a running gateway (`GET /v1/models`, stdlib urllib); `config init` writes the packaged
starter config; `completions bash|zsh|fish` prints a completion script derived from the argument parser
itself, so a new subcommand or flag completes without a change here.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

__all__ = ["add_commands", "completion_script", "version"]

INIT_TEMPLATE = Path(__file__).resolve().parent / "demo" / "init.toml"


def version() -> str:
    try:
        return metadata.version("nexus-gateway")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def gateway_models(ns: argparse.Namespace) -> int:
    """`nexus models` with no action (as in Rust Nexus): the models a running gateway serves, `--url`."""
    req = urllib.request.Request(f"{ns.url.rstrip('/')}/v1/models")
    if ns.api_key:
        req.add_header("Authorization", f"Bearer {ns.api_key}")
    try:
        with urllib.request.urlopen(req, timeout=ns.timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        print(f"nexus models: HTTP {exc.code} from {ns.url}", file=sys.stderr)
        return 3 if exc.code == 401 else 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"nexus models: cannot reach the gateway at {ns.url}: {exc}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps(body, indent=2))
        return 0
    names = [m.get("id", "") for m in body.get("data", []) if isinstance(m, dict)]
    print("\n".join(names) if names else "(no models: no healthy backend serves one)")
    return 0


def _config_init(ns: argparse.Namespace) -> int:
    target = Path(ns.output)
    if target.exists() and not ns.force:
        print(f"nexus config init: {target} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    target.write_text(INIT_TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"wrote {target}; check it with `nexus check-config -c {target}`, run it with `nexus serve`")
    return 0


def _tree(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Subcommand -> its options ('' -> the top level's options and subcommands)."""
    out: dict[str, list[str]] = {"": []}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[""].append(name)
                out[name] = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
                for a in sub._actions:
                    if isinstance(a, argparse._SubParsersAction):
                        out[name] += list(a.choices)
        else:
            out[""] += [o for o in action.option_strings if o.startswith("--")]
    return out


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    tree = _tree(parser)
    top = " ".join(tree[""])
    if shell == "bash":
        cases = "\n".join(f'    {name}) opts="{" ".join(opts)}" ;;' for name, opts in tree.items() if name)
        return (
            "# bash completion for nexus: source it, or put it in /etc/bash_completion.d/nexus\n"
            "_nexus() {\n  local cur=${COMP_WORDS[COMP_CWORD]} opts\n"
            f'  if [ "$COMP_CWORD" -eq 1 ]; then opts="{top}"; else\n  case "${{COMP_WORDS[1]}}" in\n'
            f'{cases}\n    *) opts="" ;;\n  esac; fi\n'
            '  COMPREPLY=($(compgen -W "$opts" -- "$cur"))\n}\ncomplete -o default -F _nexus nexus\n'
        )
    if shell == "zsh":
        cases = "\n".join(f"    {name}) compadd -- {' '.join(opts)} ;;" for name, opts in tree.items() if name)
        return (
            "#compdef nexus\n# zsh completion for nexus: put it in a directory of $fpath as _nexus\n"
            f"_nexus() {{\n  if (( CURRENT == 2 )); then compadd -- {top}; return; fi\n"
            f"  case $words[2] in\n{cases}\n  esac\n}}\n"
            'if [ "$funcstack[1]" = "_nexus" ]; then _nexus "$@"; else compdef _nexus nexus; fi\n'
        )
    lines = ["# fish completion for nexus: put it in ~/.config/fish/completions/nexus.fish",
             "complete -c nexus -f"]
    subs = [n for n in tree if n]
    lines.append(f"complete -c nexus -n '__fish_use_subcommand' -a '{' '.join(subs)}'")
    for name in subs:
        for opt in tree[name]:
            if opt.startswith("--"):
                lines.append(f"complete -c nexus -n '__fish_seen_subcommand_from {name}' -l {opt[2:]}")
            else:
                lines.append(f"complete -c nexus -n '__fish_seen_subcommand_from {name}' -a {opt}")
    return "\n".join(lines) + "\n"


def add_commands(sub: argparse._SubParsersAction, root: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", help="config file helpers")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    init = config_sub.add_parser("init", help="write a starter nexus.toml")
    init.add_argument("--output", "-o", default="nexus.toml", help="where to write it (default ./nexus.toml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_config_init)

    comp = sub.add_parser("completions", help="print a shell completion script")
    comp.add_argument("shell", choices=["bash", "zsh", "fish"])
    comp.set_defaults(func=lambda ns: print(completion_script(root, ns.shell), end="") or 0)
