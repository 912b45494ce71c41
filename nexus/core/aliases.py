"""Model aliases: the one walk along `routing.aliases` and its hop limit.

Config loading, the RequestAnalyzer and the gateway's model list all follow alias chains; they share this
walk so that they agree on what an alias resolves to and on when a chain is too long.

Invariants: `follow` is pure and always terminates (it stops at the first repeated name); a chain of at
most `MAX_ALIAS_HOPS` hops without a cycle resolves (a->b->c->d resolves; a fourth hop is an error).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MAX_ALIAS_HOPS", "AliasChain", "follow"]

MAX_ALIAS_HOPS = 3


@dataclass(frozen=True, slots=True)
class AliasChain:
    """`names`: the requested name, then the target of each hop, up to the end or the first repeat."""

    names: tuple[str, ...]
    cycle: bool  # the last name repeats an earlier one

    @property
    def hops(self) -> int:
        return len(self.names) - 1

    @property
    def too_long(self) -> bool:
        return self.hops > MAX_ALIAS_HOPS

    @property
    def target(self) -> str | None:
        """The model the alias resolves to, or None when the chain is a cycle or too long."""
        return None if self.cycle or self.too_long else self.names[-1]


def follow(aliases: Mapping[str, str], name: str) -> AliasChain:
    names = [name]
    seen = {name}
    while names[-1] in aliases:
        nxt = aliases[names[-1]]
        names.append(nxt)
        if nxt in seen:
            return AliasChain(tuple(names), cycle=True)
        seen.add(nxt)
    return AliasChain(tuple(names), cycle=False)
