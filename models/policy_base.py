"""The policy contract and the policies without look-ahead; the draw of a decision.

Every policy returns a probability for each candidate, so propensities are exact. A
deterministic policy puts probability 1 on its choice; exploration wrappers mix in the others.
The chosen step is drawn from that distribution with a seeded RNG (``choose``), and the
probability of the drawn step is the decision's ``propensity``: logs from any policy support
off-policy evaluation. The planner (``models.planner``) builds on these types; policies are
looked up by name in ``models.policies``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.catalog import Catalog
from features.state import UserState
from models.baselines import big_ask_choice, ladder_choice


@dataclass
class DecisionInput:
    """Everything a policy may look at for one decision."""

    catalog: Catalog
    state: UserState
    candidates: list[int]  # eligible catalog positions, already filtered by the request
    now: float
    context: Mapping[str, Any] = field(default_factory=dict)
    scorer: Any | None = None  # a models.bundle.ModelScorer, or None when there is no model
    _p: np.ndarray | None = None
    _planned: Any = None  # the planner's (output, readiness) for this input, planned in a batch

    @property
    def root(self) -> tuple[UserState, list[int], float, Mapping[str, Any]]:
        """The ``(state, candidates, now, context)`` the planner plans this decision from."""
        return (self.state, self.candidates, self.now, self.context)

    def p_accept(self) -> np.ndarray | None:
        """Readiness of each candidate (computed once per decision, None without a model)."""
        if self.scorer is None:
            return None
        if self._p is None:
            self._p = self.scorer.p_accept(self.state, self.candidates, self.now, self.context)
        return self._p


@dataclass
class PolicyOutput:
    """A distribution over ``DecisionInput.candidates`` and a score per candidate."""

    probs: np.ndarray
    scores: np.ndarray
    greedy: int  # index (into candidates) of the policy's own best choice


def one_hot(n: int, k: int) -> np.ndarray:
    """Probability 1 on candidate ``k`` of ``n``: a deterministic choice."""
    p = np.zeros(n)
    p[k] = 1.0
    return p


@dataclass(frozen=True)
class Ladder:
    """Lowest-effort eligible step."""

    name: str = "ladder"
    needs_model: bool = False

    def __call__(self, inp: DecisionInput) -> PolicyOutput:
        c = inp.candidates
        k = c.index(ladder_choice(inp.catalog, c))
        scores = -np.asarray([inp.catalog.efforts[i] for i in c], dtype=float)
        return PolicyOutput(one_hot(len(c), k), scores, k)


@dataclass(frozen=True)
class BigAsk:
    """Cheapest eligible goal, else the cheapest step toward one."""

    name: str = "big_ask"
    needs_model: bool = False

    def __call__(self, inp: DecisionInput) -> PolicyOutput:
        c = inp.candidates
        k = c.index(big_ask_choice(inp.catalog, c))
        scores = np.asarray(
            [float((inp.catalog.goal_mask >> i) & 1) - inp.catalog.efforts[i] / 1e3 for i in c]
        )
        return PolicyOutput(one_hot(len(c), k), scores, k)


@dataclass(frozen=True)
class Greedy:
    """Highest readiness now (ties: less effort). Falls back to ladder without a model."""

    name: str = "greedy"
    needs_model: bool = True

    def __call__(self, inp: DecisionInput) -> PolicyOutput:
        p = inp.p_accept()
        if p is None:
            return Ladder()(inp)
        efforts = np.asarray([inp.catalog.efforts[i] for i in inp.candidates])
        k = int(np.lexsort((efforts, -p))[0])
        return PolicyOutput(one_hot(len(p), k), p.copy(), k)


@dataclass(frozen=True)
class Random:
    """Uniform over eligible steps."""

    name: str = "random"
    needs_model: bool = False

    def __call__(self, inp: DecisionInput) -> PolicyOutput:
        n = len(inp.candidates)
        return PolicyOutput(np.full(n, 1.0 / n), np.zeros(n), 0)


@dataclass(frozen=True)
class Exploration:
    """An exploration wrapper answers to the name and needs of the policy it wraps."""

    base: Any

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def needs_model(self) -> bool:
        return self.base.needs_model


@dataclass(frozen=True)
class EpsilonGreedy(Exploration):
    """With probability ``epsilon`` a uniformly random candidate, else the base policy's choice."""

    epsilon: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")

    def __call__(self, inp: DecisionInput) -> PolicyOutput:
        out = self.base(inp)
        n = len(out.probs)
        probs = (1.0 - self.epsilon) * out.probs + self.epsilon / n
        return PolicyOutput(probs, out.scores, out.greedy)


@dataclass(frozen=True)
class Softmax(Exploration):
    """Boltzmann exploration over the base policy's scores (``temperature`` > 0)."""

    temperature: float = 0.05

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")

    def __call__(self, inp: DecisionInput) -> PolicyOutput:
        out = self.base(inp)
        z = (out.scores - out.scores.max()) / self.temperature
        e = np.exp(z)
        return PolicyOutput(e / e.sum(), out.scores, out.greedy)


@dataclass(frozen=True)
class Choice:
    """One decision: the drawn candidate and the exact probability it was drawn with."""

    index: int  # into DecisionInput.candidates
    step: int  # catalog position
    propensity: float
    explored: bool
    output: PolicyOutput


def draw_index(gen: np.random.Generator, probs: np.ndarray) -> int:
    """``gen.choice(len(probs), p=probs / probs.sum())``, the same index from the same stream,
    without ``choice``'s argument checks (half the cost of an exploring decision): numpy
    draws one double and searches the normalised cumulative sum exactly like this."""
    cdf = (probs / probs.sum()).cumsum()
    cdf /= cdf[-1]
    return int(cdf.searchsorted(gen.random(), side="right"))


def choose(
    policy: Any,
    inp: DecisionInput,
    rng: np.random.Generator | Callable[[], np.random.Generator],
) -> Choice:
    """Draw a step from the policy's distribution; deterministic policies draw without the RNG.

    ``rng`` may be a factory: seeding a generator costs more than a cached decision, so it is
    only built when the distribution has more than one step to draw from.
    """
    out = policy(inp)
    probs = out.probs
    listed = probs.tolist()  # a few candidates: Python floats are cheaper than numpy calls
    nz = [i for i, x in enumerate(listed) if x > 0]
    if len(nz) == 1:  # a deterministic choice consumes no randomness
        k = nz[0]
    else:
        gen = rng if isinstance(rng, np.random.Generator) else rng()
        k = draw_index(gen, probs)
    return Choice(
        index=k,
        step=inp.candidates[k],
        propensity=listed[k],
        explored=k != out.greedy,
        output=out,
    )
