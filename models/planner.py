"""The planner: the smallest useful next action (policy ``planner``).

From the user's point-in-time state it looks ahead over the catalog with the learned outcome
models: P(accept), P(drop | decline) and P(comes back | accept). It evaluates an expectimax tree
``depth`` offers deep, whose leaves are valued by the best goal one could ask for right there
(readiness times the goal's worth), and picks the step with the highest expected goal value.
Among steps within ``tolerance`` of the best, the one with the least effort wins: when asking for
less costs (almost) nothing, ask for less.

Because readiness is conditioned on everything the user has shown (context, accepts and
declines in a row, how fast they come back), the same tree asks a "ready" user for the goal at
once and walks a hesitant one up the ladder: the adaptation is in the model, the choice is in
the look-ahead. Every level is scored in one batched call per model, so a decision costs a few
small LightGBM calls, not hundreds.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.catalog import Catalog
from features.state import (
    ACCEPTED,
    CANDIDATE_FEATURES,
    DECLINED,
    HOUR,
    STATE_FEATURES,
    TIME_FEATURES,
    UserState,
    time_features,
)
from models.policies import DecisionInput, Ladder, PolicyOutput, _one_hot


@dataclass(frozen=True)
class Planner:
    """Depth-limited expectimax over learned outcome models.

    ``depth`` full levels are expanded (every eligible step, accept and decline), then each leaf
    is valued by a chain of up to ``chain`` ladder steps ending in the best goal;
    ``tolerance`` is the absolute difference in expected goal value below which the cheaper step
    is preferred.
    """

    depth: int = 1
    tolerance: float = 0.02
    relative_tolerance: float = 0.0
    chain: int = 6
    retry: float = 0.8
    scorer: Any = None
    catalog: Catalog | None = None
    name: str = "planner"
    needs_model: bool = True
    cache_size: int = 50_000
    _cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def bind(self, scorer: Any, catalog: Catalog) -> Planner:
        return dataclasses.replace(self, scorer=scorer, catalog=catalog, _cache={})

    def __call__(self, inp: DecisionInput) -> PolicyOutput:
        scorer = self.scorer or inp.scorer
        if scorer is None:
            return Ladder()(inp)
        out, p = self._plan(inp.state, inp.candidates, inp.now, inp.context, scorer, inp.catalog)
        inp._p = p  # the root readiness is the decision's p_accept: no second model call
        return out

    def _plan(
        self,
        state: UserState,
        candidates: list[int],
        now: float,
        context: Any,
        scorer: Any,
        catalog: Catalog,
    ) -> tuple[PolicyOutput, np.ndarray]:
        """The decision and the root readiness, from the cache when this point was planned."""
        gap = self._gap_seconds(state, scorer)
        key = self.cache_key(state, candidates, now, context, scorer, catalog, gap)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        q, p = self._expand([(state, now)], [candidates], self.depth, context, scorer, catalog, gap)
        q, p = q[0], p[0]
        best = float(q.max())
        efforts = np.asarray([catalog.efforts[i] for i in candidates])
        near = np.flatnonzero(q >= best * (1.0 - self.relative_tolerance) - self.tolerance)
        k = int(near[np.lexsort((near, efforts[near]))[0]])
        out = PolicyOutput(_one_hot(len(q), k), q, k)
        for arr in (out.probs, out.scores, p):  # shared by every later hit: read-only
            arr.flags.writeable = False
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[key] = (out, p)
        return out, p

    # -- look-ahead ----------------------------------------------------------------------------
    def q_values(
        self,
        state: UserState,
        candidates: list[int],
        now: float,
        context: Any,
        scorer: Any,
        catalog: Catalog,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected goal value of offering each candidate now, and its readiness.

        Results are cached by ``cache_key``, which is equal for two users exactly when every
        feature row of their look-ahead trees routes identically through every tree: many
        users stand at the same point (a first visit from one channel, a returning user a few
        minutes later) and the answer is then computed once, and a cached answer is the answer
        the full computation would give (the key is exact, not an approximation).
        """
        out, p = self._plan(state, candidates, now, context, scorer, catalog)
        return out.scores, p

    def cache_key(
        self,
        state: UserState,
        candidates: list[int],
        now: float,
        context: Any,
        scorer: Any,
        catalog: Catalog,
        gap: float,
    ) -> tuple:
        """Everything the look-ahead's feature rows depend on, as the models see it.

        The counts, accepted steps, efforts, values and context are kept exactly. The clock
        enters the tree only through the four time features of each imagined visit (the
        root at ``now``, then one visit every ``gap`` seconds, ``depth + chain`` deep); the key
        holds, for each of them, its position among the models' split thresholds, computed
        with ``features.state.time_features`` on exactly the floats the rows will contain.
        Two users with equal keys therefore get identical predictions at every node.
        """
        splits = scorer.split_lists
        ctx = scorer.spec.encode_merged(state.context, context)
        base = len(STATE_FEATURES) + len(CANDIDATE_FEATURES)
        ctx_key = tuple(
            None
            if v != v  # NaN: missing
            else v
            if splits[base + j] is None  # categorical code: exact
            else bisect_left(splits[base + j], v)
            for j, v in enumerate(ctx)
        )
        thresholds = splits[_TIME_COLUMN : _TIME_COLUMN + len(TIME_FEATURES)]
        time_key = tuple(
            -1 if v != v else bisect_left(thr, v)
            for row in _visit_times(state, now, gap, self.depth + self.chain)
            for v, thr in zip(row, thresholds, strict=True)
        )
        return (
            id(scorer),
            id(catalog),
            tuple(candidates),
            state.accepted_mask,
            state.n_asks,
            state.n_accepts,
            state.cons_accepts,
            state.cons_declines,
            state.max_effort,
            state.value_received,
            state.stage_reached,
            tuple(sorted(state.step_offers.items())),
            tuple(sorted(state.step_declines.items())),
            ctx_key,
            time_key,
        )

    def _expand(
        self,
        nodes: list[tuple[UserState, float]],
        cands: list[list[int]],
        depth: int,
        context: Any,
        scorer: Any,
        catalog: Catalog,
        gap: float,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Q of every candidate of every node, ``depth`` full levels deep, then chain leaves."""
        if not any(cands):
            return [np.zeros(0) for _ in nodes], [np.zeros(0) for _ in nodes]
        X = scorer.block(nodes, cands, context, catalog)
        pa = scorer.p_accept_rows(X)
        pd = scorer.p_drop_rows(X)
        pb = scorer.p_back_rows(X)
        flat_steps = [s for cs in cands for s in cs]
        is_goal = np.array([(catalog.goal_mask >> s) & 1 for s in flat_steps], dtype=bool)
        reward = np.array([catalog.goal_rewards[s] for s in flat_steps])
        children: list[tuple[UserState, float]] = []
        acc_idx = np.full(len(flat_steps), -1)
        dec_idx = np.full(len(flat_steps), -1)
        j = 0
        for (st, t), cs in zip(nodes, cands, strict=True):
            t_next = t + gap
            for s in cs:
                if not (catalog.goal_mask >> s) & 1:
                    acc_idx[j] = len(children)
                    children.append((st.after(catalog, s, ACCEPTED, t), t_next))
                dec_idx[j] = len(children)
                children.append((st.after(catalog, s, DECLINED, t), t_next))
                j += 1
        if depth <= 1:
            v = self._chain_values(children, context, scorer, catalog, gap)
        else:
            child_cands = [catalog.eligible_indices(c.accepted_mask) for c, _ in children]
            cq, _ = self._expand(children, child_cands, depth - 1, context, scorer, catalog, gap)
            v = np.array([float(c.max()) if len(c) else 0.0 for c in cq])
        v_acc = np.where(acc_idx >= 0, v[np.maximum(acc_idx, 0)], 0.0)
        v_dec = v[dec_idx]
        q = pa * np.where(is_goal, reward, pb * v_acc) + (1.0 - pa) * (1.0 - pd) * v_dec
        return _split(q, cands), _split(pa, cands)

    def _chain_values(
        self,
        nodes: list[tuple[UserState, float]],
        context: Any,
        scorer: Any,
        catalog: Catalog,
        gap: float,
    ) -> np.ndarray:
        """Leaf values: the best of "ask a goal after k more ladder steps", k = 0..chain.

        Each step of the chain counts one retry after a decline (weighted by ``retry``, since a
        decline makes the next yes less likely); further branches are ignored, so this is a
        cautious estimate of what the user's future is worth. It is what lets a short
        look-ahead see that a hesitant user's goal lies five small steps away.
        """
        n = len(nodes)
        best = np.zeros(n)
        reach = np.ones(n)  # probability of still walking the chain
        states = [st for st, _ in nodes]
        times = [t for _, t in nodes]
        active = list(range(n))
        for _ in range(self.chain + 1):
            if not active:
                break
            chain_nodes: list[tuple[UserState, float]] = []
            chain_cands: list[list[int]] = []
            meta: list[tuple[int, list[int], int | None]] = []
            for i in active:
                elig = catalog.eligible_indices(states[i].accepted_mask)
                goals = [s for s in elig if (catalog.goal_mask >> s) & 1]
                rest = [s for s in elig if not (catalog.goal_mask >> s) & 1]
                step = min(rest, key=lambda s: (catalog.efforts[s], s)) if rest else None
                cs = goals + ([step] if step is not None else [])
                chain_nodes.append((states[i], times[i]))
                chain_cands.append(cs)
                meta.append((i, goals, step))
            if not any(chain_cands):
                break
            X = scorer.block(chain_nodes, chain_cands, context, catalog)
            pa = scorer.p_accept_rows(X)
            pb = scorer.p_back_rows(X)
            # one retry after a decline, a little less likely to succeed than the first ask
            pa = pa * (1.0 + (1.0 - pa) * (1.0 - scorer.p_drop_rows(X)) * self.retry)
            r = 0
            nxt: list[int] = []
            for i, goals, step in meta:
                for g in goals:
                    best[i] = max(best[i], reach[i] * pa[r] * catalog.goal_rewards[g])
                    r += 1
                if step is not None:
                    reach[i] *= pa[r] * pb[r]
                    states[i] = states[i].after(catalog, step, ACCEPTED, times[i])
                    times[i] += gap
                    r += 1
                    if reach[i] > best[i]:  # the chain could still beat what we have
                        nxt.append(i)
            active = nxt
        return best

    @staticmethod
    def _gap_seconds(state: UserState, scorer: Any) -> float:
        """How long until the imagined next visit: this user's own pace when known."""
        if state.n_asks > 1:
            return (state.last_ts - state.first_ts) / (state.n_asks - 1)
        return float(scorer.bundle.typical_gap_hours) * HOUR


_TIME_COLUMN = STATE_FEATURES.index(TIME_FEATURES[0])


def _visit_times(
    state: UserState, now: float, gap: float, horizon: int
) -> list[tuple[float, float, float, float]]:
    """The TIME_FEATURES of the root and of each imagined later visit (``horizon + 1`` rows).

    Visit ``d`` happens at ``now + gap`` added ``d`` times (the planner advances its clock by
    the same repeated addition) after imagined asks at each earlier visit, so these are the
    exact floats ``UserState.after(...).state_vector(t)`` puts into the look-ahead's rows.
    """
    rows = [time_features(state.n_asks, state.first_ts, state.last_ts, state.prev_ts, now)]
    first = state.first_ts if state.n_asks else now
    prev, last, t = state.last_ts, now, now
    for d in range(1, horizon + 1):
        t = t + gap
        rows.append(time_features(state.n_asks + d, first, last, prev, t))
        prev, last = last, t
    return rows


def _split(x: np.ndarray, cands: list[list[int]]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    i = 0
    for cs in cands:
        out.append(x[i : i + len(cs)])
        i += len(cs)
    return out
