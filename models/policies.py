"""Policies by name: ``POLICIES`` and the exploration wrappers, and ``PolicyConfig``, the
value that names a policy (``planner``, ``greedy+epsilon=0.1``) and builds it.

The policies themselves live in ``models.policy_base`` (the contract and the policies without
look-ahead) and ``models.planner``; this registry sits above both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.planner import Planner
from models.policy_base import BigAsk, EpsilonGreedy, Greedy, Ladder, Random, Softmax

POLICIES: dict[str, Callable[..., Any]] = {
    "ladder": Ladder,
    "big_ask": BigAsk,
    "greedy": Greedy,
    "random": Random,
    "planner": Planner,
}
EXPLORATION: dict[str, Callable[..., Any]] = {
    "epsilon": lambda base, value: EpsilonGreedy(base, epsilon=value),
    "softmax": lambda base, value: Softmax(base, temperature=value),
}


@dataclass(frozen=True)
class PolicyConfig:
    """A policy by name with optional exploration, e.g. ``planner`` with ``epsilon`` 0.05."""

    name: str = "planner"
    exploration: str | None = None  # "epsilon" | "softmax" | None
    value: float = 0.0  # epsilon or temperature
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r} (known: {', '.join(POLICIES)})")
        if self.exploration is not None and self.exploration not in EXPLORATION:
            raise ValueError(f"unknown exploration {self.exploration!r} (epsilon or softmax)")

    def build(self) -> Any:
        policy = POLICIES[self.name](**dict(self.params))
        if self.exploration:
            policy = EXPLORATION[self.exploration](policy, self.value)
        return policy

    @classmethod
    def parse(cls, text: str) -> PolicyConfig:
        """``planner``, ``planner+epsilon=0.1`` or ``greedy+softmax=0.05``."""
        name, _, expl = text.partition("+")
        if not expl:
            return cls(name=name.strip())
        kind, _, val = expl.partition("=")
        try:
            value = float(val)
        except ValueError:
            raise ValueError(f"bad exploration value in {text!r}") from None
        return cls(name=name.strip(), exploration=kind.strip(), value=value)
