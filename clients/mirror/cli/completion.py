"""`mirrorctl completion bash|zsh`: a static completion script made from the argparse tree."""

from __future__ import annotations

import argparse

from mirror.cli.context import Context


def _tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Each command path ("", "policy", "policy create") -> the words that may follow."""
    words: list[str] = []
    out: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                out.update(_tree(sub, (*path, name)))
        else:
            words += [o for o in action.option_strings if o.startswith("--")]
    out[" ".join(path)] = sorted(set(words))
    return out


def bash_script(parser: argparse.ArgumentParser, prog: str = "mirrorctl") -> str:
    tree = _tree(parser)
    cases = "\n".join(
        f'        "{path}") words="{" ".join(words)}" ;;' for path, words in sorted(tree.items())
    )
    fn = "_" + prog.replace("-", "_")
    return f"""# bash completion for {prog}; load with: source <({prog} completion bash)
{fn}() {{
    local cur path="" w i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        [[ "$w" == -* ]] && continue
        case "${{path:+$path }}$w" in
{chr(10).join(f'            "{p}") path="{p}" ;;' for p in sorted(tree) if p)}
        esac
    done
    local words
    case "$path" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F {fn} {prog}
"""


def zsh_script(parser: argparse.ArgumentParser, prog: str = "mirrorctl") -> str:
    return (
        f"# zsh completion for {prog}; load with: source <({prog} completion zsh)\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + bash_script(parser, prog)
    )


def make_handler(parser: argparse.ArgumentParser) -> object:
    def completion(ctx: Context) -> int:
        shell = ctx.args.shell
        print(bash_script(parser) if shell == "bash" else zsh_script(parser), end="")
        return 0

    return completion
