"""The planner: the smallest useful next action (policy ``planner``).

From the user's point-in-time state it looks ahead over the catalog with the learned outcome
models: P(accept), P(drop | decline) and P(comes back | accept). It evaluates an expectimax tree
``depth`` offers deep, whose leaves are valued by walks in the same models (up the ladder, by
the biggest warm-up step and, where goals have prerequisites, prerequisites first, each ending
in the best goal one could ask for: readiness times the goal's worth), and picks the step with
the highest expected goal value. Each imagined ask after the one being chosen counts at
``discount`` (0.9) of what the models promise for it: see ``Planner``.
When the bundle holds a value model (``models.fitted_q``: the value of an offer by fitted Q
iteration over the logged transitions), a candidate's value is the mean of the tree's and that
model's (``value_weight``). The walks cannot see a best path of another shape (in a funnel where
accumulated value makes the goal easier, a climb through the steps that deliver value), and
fitted Q, which needs no path shape, extrapolates wherever the incumbent's log is thin; they
err in different places. With the default tolerance and discount the mean converts 0.006 of
the type-blind reference more than the tree alone on ``random:0..29`` (SE 0.002, paired by
world), and 0.024 (SE 0.006), 0.013 (SE 0.007), 0.019 (SE 0.008) and 0.013 (SE 0.007) more
on ``random:30..59``, ``random:60..89``, ``random:90..119`` and ``random:120..149``.
Among steps within ``relative_tolerance`` of the best (3% of its value by default), the one with
the least effort wins: when asking for less costs (almost) nothing, ask for less. The tolerance
is relative because values differ in scale from funnel to funnel and shrink late in a user's
visits: an absolute one (0.02) made every step "as good" wherever values were small, so the
planner kept offering the lowest rung where only the goal could still convert.

Because readiness is conditioned on everything the user has shown (context, accepts and
declines in a row, how fast they come back), the same tree asks a "ready" user for the goal at
once and walks a hesitant one up the ladder: the adaptation is in the model, the choice is in
the look-ahead. Every level is scored in one batched call per model, so a decision costs a few
small LightGBM calls, not hundreds. ``Planner.plan_many`` plans many users at once: the nodes of
all their trees are columns (``features.state.StateColumns``), each level of all of them is one
call per model, and rows that repeat across users are scored once. A single decision is the
one-root case of the same code.
"""

from __future__ import annotations

import dataclasses
import struct
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.catalog import Catalog
from features.spec import candidate_rows, root_block
from features.state import (
    CANDIDATE_FEATURES,
    HOUR,
    STATE_FEATURES,
    TIME_FEATURES,
    StateColumns,
    UserState,
    merged_context,
    time_feature_columns,
    time_features,
)
from models.baselines import goal_prerequisites
from models.linear import is_linear
from models.policy_base import DecisionInput, Ladder, PolicyOutput, one_hot


@dataclass(frozen=True)
class Planner:
    """Depth-limited expectimax over learned outcome models.

    ``depth`` full levels are expanded (every eligible step, accept and decline), then each leaf
    is valued by the best of its walks of up to ``chain`` warm-up steps ending in the best goal;
    a step whose expected goal value is within ``relative_tolerance`` of the best (as a share
    of the best) plus ``tolerance`` (absolute) counts as "as good", and the cheapest of those
    wins.

    ``value_weight`` is the share of a candidate's value taken from the bundle's value model
    when it has one (see the module docstring); 0 plans with the tree alone.

    ``discount`` is how much one more imagined ask is trusted: a path ``k`` asks beyond the
    one being chosen counts at ``discount ** k`` of its modelled value. The models are fitted
    where the incumbent went, so a path a few asks off its track is mostly extrapolation (in
    one world whose incumbent climbs one rung at a time, P(goal | one mid-sized warm-up
    accepted) came out 0.48 where the truth was 0.37), and the look-ahead, taking the best of
    many paths, picks the ones the models over-rate; the longer the path, the larger the
    error. Undiscounted, warm-ups looked better than the goal where asking for the goal at
    once was right. 0.9 was chosen, with the value model, on ``random:0..29`` against 0.95 and
    1: against 0.95 it changed the mean by +0.003 (SE 0.001) there, -0.001 (0.004) on
    ``random:30..59`` and +0.000 (0.002) on ``random:60..89``, and raised the worst decile in
    all three (0.910 to 0.918, 0.834 to 0.859, 0.907 to 0.916). With the true
    models (``tests/models/test_planner_exact.py``) the right discount is 1, and with the
    logistic readiness baseline the planner does not discount (see ``_Tree``).
    """

    depth: int = 1
    tolerance: float = 0.0
    relative_tolerance: float = 0.03
    chain: int = 6
    retry: float = 0.8
    discount: float = 0.9
    value_weight: float = 0.5
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
        planned = inp._planned  # set by Decider.decide_many, which planned this very input
        if planned is None:
            planned = self._plan(
                inp.state, inp.candidates, inp.now, inp.context, scorer, inp.catalog
            )
        out, p = planned
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
        return self.plan_many([(state, candidates, now, context)], scorer, catalog)[0]

    def plan_many(
        self,
        roots: Sequence[tuple[UserState, Sequence[int], float, Any]],
        scorer: Any,
        catalog: Catalog,
    ) -> list[tuple[PolicyOutput, np.ndarray]]:
        """``_plan`` for many ``(state, candidates, now, context)`` roots in one pass.

        Roots are keyed with ``cache_key``; those neither cached nor equal to an earlier root of
        the batch are expanded together, so every level of all their look-ahead trees is one
        feature block and one call per model. LightGBM scores each row on its own, so every
        root gets exactly the answer it would get alone.
        """
        results: list[tuple[PolicyOutput, np.ndarray] | None] = [None] * len(roots)
        pending: dict[tuple, list[int]] = {}
        todo: list[tuple[tuple, int, float, list[float]]] = []
        cache = self._cache
        gaps = [self._gap_seconds(r[0], scorer) for r in roots]
        keys, contexts = self._keys(roots, gaps, scorer, catalog)
        for i, key in enumerate(keys):
            hit = cache.get(key)
            if hit is not None:
                results[i] = hit
                continue
            same = pending.get(key)
            if same is None:
                pending[key] = [i]
                todo.append((key, i, gaps[i], contexts[i]))
            else:
                same.append(i)
        if todo:
            planned = self._plan_misses(
                [roots[i] for _, i, _, _ in todo],
                [gap for _, _, gap, _ in todo],
                [ctx for _, _, _, ctx in todo],
                scorer,
                catalog,
            )
            for (key, _, _, _), hit in zip(todo, planned, strict=True):
                if len(cache) >= self.cache_size:
                    cache.clear()
                cache[key] = hit
                for i in pending[key]:
                    results[i] = hit
        return results  # type: ignore[return-value]

    def cached(
        self,
        root: tuple[UserState, Sequence[int], float, Any],
        scorer: Any,
        catalog: Catalog,
    ) -> tuple[PolicyOutput, np.ndarray] | None:
        """The cached plan of one ``(state, candidates, now, context)`` root, or None on a miss.

        Lets a caller that can wait (the service's event loop) collect misses of concurrent
        requests and hand them to ``plan_many`` together, while a hit answers at once.
        """
        keys, _ = self._keys([root], [self._gap_seconds(root[0], scorer)], scorer, catalog)
        return self._cache.get(keys[0])

    def _plan_misses(
        self,
        roots: Sequence[tuple[UserState, Sequence[int], float, Any]],
        gaps: Sequence[float],
        contexts: Sequence[list[float]],
        scorer: Any,
        catalog: Catalog,
    ) -> list[tuple[PolicyOutput, np.ndarray]]:
        """The full look-ahead of every root, all trees together."""
        block = root_block(scorer.spec, catalog, roots, contexts)
        gap = np.array(gaps, dtype=np.float64)
        tree = _Tree(catalog, scorer, self.retry, self.chain, self.discount)
        step = block.step
        X = tree.rows(block.states, block.now, block.contexts, block.node, step)
        q_all, p_all = tree.expand(
            block.states, block.now, gap, block.contexts, block.node, step, self.depth, X
        )
        w = self.value_weight
        if w and getattr(scorer, "has_value", False):  # the learned value, beside the tree's
            q_all = (1.0 - w) * q_all + w * scorer.q_rows(X)
        out: list[tuple[PolicyOutput, np.ndarray]] = []
        efforts_all = catalog.arrays["effort"]
        a = 0
        for n in block.counts:
            q, p = q_all[a : a + n], p_all[a : a + n]
            efforts = efforts_all[step[a : a + n]]
            a += n
            best = float(q.max())
            near = np.flatnonzero(q >= best * (1.0 - self.relative_tolerance) - self.tolerance)
            k = int(near[np.lexsort((near, efforts[near]))[0]])
            res = PolicyOutput(one_hot(len(q), k), q, k)
            for arr in (res.probs, res.scores, p):  # shared by every later hit: read-only
                arr.flags.writeable = False
            out.append((res, p))
        return out

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
        candidates: Sequence[int],
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
        return self._keys([(state, candidates, now, context)], [gap], scorer, catalog)[0][0]

    def _keys(
        self,
        roots: Sequence[tuple[UserState, Sequence[int], float, Any]],
        gaps: Sequence[float],
        scorer: Any,
        catalog: Catalog,
    ) -> tuple[list[tuple], list[list[float]]]:
        """``cache_key`` of every root, and the encoded contexts they were built from (the
        rows' context part). The time part is binned for all roots at once."""
        splits = scorer.split_lists
        base = len(STATE_FEATURES) + len(CANDIDATE_FEATURES)
        horizon = self.depth + self.chain
        if len(roots) >= _VECTOR_KEYS:
            time_keys = _time_codes(
                [r[0] for r in roots],
                [r[2] for r in roots],
                gaps,
                horizon,
                scorer.split_arrays[_TIME_COLUMN : _TIME_COLUMN + len(TIME_FEATURES)],
            ).tolist()
        else:  # a few roots: numpy's per-call cost would exceed the Python loop's
            thresholds = splits[_TIME_COLUMN : _TIME_COLUMN + len(TIME_FEATURES)]
            time_keys = [
                [
                    -1 if v != v else _float_bits(v) if thr is None else bisect_left(thr, v)
                    for row in _visit_times(state, now, gap, horizon)
                    for v, thr in zip(row, thresholds, strict=True)
                ]
                for (state, _, now, _), gap in zip(roots, gaps, strict=True)
            ]
        encode = scorer.spec.encode_merged
        keys: list[tuple] = []
        contexts: list[list[float]] = []
        for (state, candidates, _, context), time_key in zip(roots, time_keys, strict=True):
            ctx = encode(state.context, context)
            ctx_key = tuple(
                None
                if v != v  # NaN: missing
                else v
                if splits[base + j] is None  # categorical code: exact
                else bisect_left(splits[base + j], v)
                for j, v in enumerate(ctx)
            )
            keys.append(
                (
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
                    tuple(time_key),
                    # which steps exist for this user shapes the whole tree (available_when)
                    catalog.available(merged_context(state.context, context))
                    if catalog.has_availability
                    else -1,
                )
            )
            contexts.append(ctx)
        return keys, contexts

    @staticmethod
    def _gap_seconds(state: UserState, scorer: Any) -> float:
        """How long until the imagined next visit: this user's own pace when known."""
        if state.n_asks > 1:
            return (state.last_ts - state.first_ts) / (state.n_asks - 1)
        return float(scorer.bundle.typical_gap_hours) * HOUR


class _Tree:
    """The look-ahead over columnar nodes: each level of every tree is one block of rows.

    A node is a row of ``StateColumns`` with its clock ``now``, its visit spacing ``gap`` and
    its encoded context (a row of ``ctx``); a candidate row is a ``(node, step)`` pair. The
    arithmetic is elementwise and in the order of the per-node formulas, so each root's values
    do not depend on which other roots share the batch.
    """

    def __init__(
        self, catalog: Catalog, scorer: Any, retry: float, chain: int, discount: float
    ) -> None:
        self.catalog = catalog
        self.scorer = scorer
        self.retry = retry
        self.chain = chain
        # the discount counters the look-ahead's pick of the paths trees over-rate; the
        # logistic baseline, linear in effort and history, errs differently (on ``two_goals``
        # discounting cost it 0.04 of conversion served, and LightGBM 0.004 in process)
        linear = is_linear(scorer.bundle.readiness)
        self.discount = 1.0 if linear else discount
        k = catalog.n
        self.is_goal = catalog.arrays["is_goal"] > 0
        self.reward = np.asarray(catalog.goal_rewards, dtype=np.float64)
        self.requires_t = catalog.requires.T.copy()
        self.has_requires = bool(catalog.requires.any())
        effort = catalog.arrays["effort"]
        self.by_effort = np.lexsort((np.arange(k), effort))  # ladder order: (effort, position)
        self.by_effort_desc = self.by_effort[::-1].copy()  # the biggest-warm-up walk's order
        needed = goal_prerequisites(catalog)  # the steps big_ask heads for, as a mask
        self.unlocks = np.array([(needed >> j) & 1 for j in range(k)], dtype=bool) & ~self.is_goal
        walks = [_LADDER]
        # the other walks need readiness that can tell when an early bigger yes is likely; the
        # logistic baseline, linear in effort and history, over-rates it
        if not linear:
            walks.append(_BIGGEST)
            if self.unlocks.any():  # some goal waits behind a step: take those steps first
                walks.append(_UNLOCK)
        self.walks = tuple(walks)

    def eligible(self, states: StateColumns) -> np.ndarray:
        """``Catalog.eligible_indices`` of every node, as a (nodes, steps) mask."""
        acc = states.accepted
        ok = ~acc & ~(acc & self.is_goal).any(axis=1, keepdims=True)
        if self.has_requires:
            ok &= ((~acc).astype(np.int64) @ self.requires_t) == 0
        if states.unavailable is not None:  # the catalog's available_when for each node's user
            ok &= ~states.unavailable
        return ok

    def rows(
        self,
        states: StateColumns,
        now: np.ndarray,
        ctx: np.ndarray,
        node: np.ndarray,
        step: np.ndarray,
    ) -> np.ndarray:
        return candidate_rows(self.scorer.spec, self.catalog, states, now, ctx, node, step)

    def predict(self, X: np.ndarray, back: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P(accept), P(drop | decline) and, where ``back`` is set, P(comes back | accept) of
        every row (NaN where not asked for).

        Look-ahead trees of different users share many nodes, so equal rows are scored once:
        a model's prediction depends on nothing but the row, hence scattering the prediction
        of one copy to all of them gives every row exactly its own prediction.
        """
        scorer = self.scorer
        pb = np.full(len(X), np.nan)
        if len(X) < _DEDUPE_ROWS:  # one user's tree: finding repeats costs more than scoring
            pb[back] = scorer.p_back_rows(X[back])
            return scorer.p_accept_rows(X), scorer.p_drop_rows(X), pb
        idx, inv = _unique_rows(X)
        U = X[idx]
        pa = scorer.p_accept_rows(U)[inv]
        pd = scorer.p_drop_rows(U)[inv]
        need = np.zeros(len(U), dtype=bool)
        need[inv[back]] = True
        pb_u = np.full(len(U), np.nan)
        pb_u[need] = scorer.p_back_rows(U[need])
        return pa, pd, pb_u[inv]

    def expand(
        self,
        states: StateColumns,
        now: np.ndarray,
        gap: np.ndarray,
        ctx: np.ndarray,
        node: np.ndarray,
        step: np.ndarray,
        depth: int,
        X: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Q and readiness of every candidate row (feature rows ``X`` when the caller built
        them), ``depth`` full levels deep, then chains."""
        if len(node) == 0:
            return np.zeros(0), np.zeros(0)
        is_goal = self.is_goal[step]
        if X is None:
            X = self.rows(states, now, ctx, node, step)
        pa, pd, pb = self.predict(X, ~is_goal)
        reward = self.reward[step]
        acc_rows = np.flatnonzero(~is_goal)  # an accepted goal ends the tree: no child
        n_acc = len(acc_rows)
        parent = np.concatenate([node[acc_rows], node])
        child_step = np.concatenate([step[acc_rows], step])
        accepted = np.zeros(len(parent), dtype=bool)
        accepted[:n_acc] = True
        children = states.after(self.catalog, parent, child_step, accepted, now[parent])
        c_now = now[parent] + gap[parent]
        c_gap = gap[parent]
        c_ctx = ctx[parent]
        if depth <= 1:
            v = self.chain_values(children, c_now, c_gap, c_ctx)
        else:
            c_node, c_step = np.nonzero(self.eligible(children))
            cq, _ = self.expand(children, c_now, c_gap, c_ctx, c_node, c_step, depth - 1)
            v = np.full(len(parent), -np.inf)
            np.maximum.at(v, c_node, cq)
            v[np.bincount(c_node, minlength=len(parent)) == 0] = 0.0
        v_acc = np.zeros(len(node))
        v_acc[acc_rows] = v[:n_acc]
        v_dec = v[n_acc:]
        d = self.discount  # every later ask counts at a share of what the models promise
        q = pa * np.where(is_goal, reward, d * pb * v_acc) + (1.0 - pa) * (1.0 - pd) * d * v_dec
        return q, pa

    def chain_values(
        self, states: StateColumns, now: np.ndarray, gap: np.ndarray, ctx: np.ndarray
    ) -> np.ndarray:
        """Leaf values: the best of "ask a goal after k more warm-up steps", k = 0..chain, over
        up to three walks from the leaf: up the ladder (the cheapest eligible non-goal step
        next), by the biggest warm-up (the largest eligible non-goal step next) and, where some
        goal requires other steps, prerequisites first (the cheapest eligible step that some
        goal needs, directly or through another step; the cheapest step when none is eligible).

        Each step of a walk counts one retry after a decline (weighted by ``retry``, since a
        decline makes the next yes less likely); further branches are ignored, so this is a
        cautious estimate of what the user's future is worth. It is what lets a short
        look-ahead see that a hesitant user's goal lies five small steps away. The second walk
        is there because the ladder alone cannot see that one bigger yes can be worth more
        than several small ones, each with its own risk of a decline: where the effort gap to
        the goal, resistance or a penalty after declines govern readiness, the best path skips
        rungs. The third is there because neither of the others heads for a goal that waits
        behind a prerequisite: in a catalog whose cheapest goal needs a mid-sized step, the
        ladder spends its asks on rungs the goal does not need, and the biggest warm-up
        overshoots. All walks of every leaf go through the same model calls. With the logistic
        readiness baseline only the ladder is walked: linear in effort and history, it
        over-rates an early bigger yes (on ``two_goals`` the biggest warm-up cost 0.01-0.014 of
        conversion with it and prerequisites first 0.008, and neither cost anything with
        LightGBM).
        """
        n = len(states)
        kinds = self.walks
        w = len(kinds)
        if w > 1:  # rows j*n..(j+1)*n walk kinds[j]
            walk = np.tile(np.arange(n), w)
            states = states.take(walk)
            now, gap, ctx = now[walk], gap[walk], ctx[walk]
        m = len(states)
        kind = np.repeat(np.array(kinds), n)
        up, down = self.by_effort, self.by_effort_desc
        best = np.zeros(m)
        reach = np.ones(m)  # probability of still walking the chain
        active = np.arange(m)  # walk of each chain node
        for level in range(self.chain + 1):
            if len(active) == 0:
                break
            elig = self.eligible(states)
            goals = elig & self.is_goal
            rest = elig & ~self.is_goal
            has_step = rest.any(axis=1)
            ladder = up[rest[:, up].argmax(axis=1)]
            if w > 1:
                k_of = kind[active]
                b = np.flatnonzero(k_of == _BIGGEST)
                ladder[b] = down[rest[b][:, down].argmax(axis=1)]
                u = np.flatnonzero(k_of == _UNLOCK)
                if len(u):
                    first = rest[u] & self.unlocks
                    first = np.where(first.any(axis=1, keepdims=True), first, rest[u])
                    ladder[u] = up[first[:, up].argmax(axis=1)]
            if w > 1 and level == 0:  # all walks start at the leaf: ask its goals once, and
                goals[n:] = False  # take another walk only where it starts off the ladder
                other = kind != _LADDER
                has_step[other] &= ladder[other] != np.tile(ladder[:n], w)[other]
            g_node, g_step = np.nonzero(goals)
            s_node = np.flatnonzero(has_step)
            s_step = ladder[s_node]
            node = np.concatenate([g_node, s_node])
            if len(node) == 0:
                break
            step = np.concatenate([g_step, s_step])
            ng = len(g_node)
            back = np.zeros(len(node), dtype=bool)
            back[ng:] = True  # the come-back model only matters after a ladder step
            pa, pd, pb = self.predict(self.rows(states, now, ctx, node, step), back)
            # one retry after a decline, a little less likely to succeed than the first ask
            pa = pa * (1.0 + (1.0 - pa) * (1.0 - pd) * self.retry * self.discount)
            leaf_g = active[g_node]
            np.maximum.at(best, leaf_g, reach[leaf_g] * pa[:ng] * self.reward[g_step])
            if w > 1 and level == 0:
                best[n:] = np.tile(best[:n], w - 1)
            leaf_s = active[s_node]
            reach[leaf_s] *= pa[ng:] * pb[ng:] * self.discount
            go = reach[leaf_s] > best[leaf_s]  # the chain could still beat what we have
            keep = s_node[go]
            states = states.after(
                self.catalog,
                keep,
                s_step[go],
                np.ones(len(keep), dtype=bool),
                now[keep],
            )
            now = now[keep] + gap[keep]
            gap = gap[keep]
            ctx = ctx[keep]
            active = active[keep]
        return best.reshape(w, n).max(axis=0)


def _unique_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(idx, inv)`` with ``X[idx][inv]`` bytewise equal to ``X``, ``X[idx]`` without repeats
    (but for the rare hash collision, whose rows simply stay apart)."""
    n = len(X)
    if n < 2:
        return np.arange(n), np.arange(n)
    u = np.ascontiguousarray(X).view(np.uint64)  # the bits: NaN equals NaN, -0.0 is not 0.0
    z = u * ((np.arange(1, u.shape[1] + 1, dtype=np.uint64) * _GOLDEN) | np.uint64(1))
    z ^= z >> np.uint64(31)  # small integers have all-zero low bits: fold the high ones in
    z *= _MIX
    _, first, codes = np.unique(z.sum(axis=1), return_index=True, return_inverse=True)
    codes = codes.astype(np.int64)
    apart = np.flatnonzero(~(u == u[first[codes]]).all(axis=1))  # collisions: own rows
    if len(apart):
        codes[apart] = len(first) + np.arange(len(apart))
        first = np.concatenate([first, apart])
    return first, codes


# the leaf walks of ``_Tree.chain_values``: ladder, biggest warm-up, prerequisites first
_LADDER, _BIGGEST, _UNLOCK = 0, 1, 2
_DEDUPE_ROWS = 128  # from this many rows on, equal rows of a level are scored once
_VECTOR_KEYS = 16  # from this many roots on, the time part of the keys is binned with numpy
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_TIME_COLUMN = STATE_FEATURES.index(TIME_FEATURES[0])


def _visit_times(
    state: UserState, now: float, gap: float, horizon: int
) -> list[tuple[float, float, float, float]]:
    """The TIME_FEATURES of the root and of each imagined later visit (``horizon + 1`` rows).

    Visit ``d`` happens at ``now + gap`` added ``d`` times (the planner advances its clock by
    the same repeated addition) after imagined asks at each earlier visit, so these are the
    exact floats ``UserState.after(...).state_vector(t)`` puts into the look-ahead's rows.
    ``_time_codes`` bins the same floats for many roots at once.
    """
    rows = [time_features(state.n_asks, state.first_ts, state.last_ts, state.prev_ts, now)]
    first = state.first_ts if state.n_asks else now
    prev, last, t = state.last_ts, now, now
    for d in range(1, horizon + 1):
        t = t + gap
        rows.append(time_features(state.n_asks + d, first, last, prev, t))
        prev, last = last, t
    return rows


def _float_bits(v: float) -> int:
    """The float's bits as an integer: the exact-value code ``_time_codes`` gives unbinned
    features, so a root keyed alone and one keyed in a batch get the same key."""
    return struct.unpack("<q", struct.pack("<d", v))[0]


def _time_codes(
    states: Sequence[UserState],
    now: Sequence[float],
    gap: Sequence[float],
    horizon: int,
    thresholds: Sequence[np.ndarray | None],
) -> np.ndarray:
    """Per root, the split position of every TIME_FEATURE of the root and of each imagined
    later visit, (roots, (horizon + 1) * 4), -1 for NaN (missing).

    Visit ``d`` happens at ``now + gap`` added ``d`` times (the planner advances its clock by
    the same repeated addition) after imagined asks at each earlier visit, so these are the
    positions of the exact floats the look-ahead's rows hold (``time_feature_columns`` is
    ``time_features`` elementwise; ``searchsorted`` on the left is ``bisect_left``).
    """
    n_asks = np.fromiter((s.n_asks for s in states), dtype=np.int64, count=len(states))
    first = np.fromiter((s.first_ts for s in states), dtype=np.float64, count=len(states))
    last = np.fromiter((s.last_ts for s in states), dtype=np.float64, count=len(states))
    prev = np.fromiter((s.prev_ts for s in states), dtype=np.float64, count=len(states))
    t = np.asarray(now, dtype=np.float64)
    gap_arr = np.asarray(gap, dtype=np.float64)
    visits = np.empty((len(states), horizon + 1, len(TIME_FEATURES)))
    visits[:, 0] = time_feature_columns(n_asks, first, last, prev, t)
    first = np.where(n_asks > 0, first, t)
    prev, last = last, t
    for d in range(1, horizon + 1):
        t = t + gap_arr
        visits[:, d] = time_feature_columns(n_asks + d, first, last, prev, t)
        prev, last = last, t
    codes = np.empty(visits.shape, dtype=np.int64)
    for j, thr in enumerate(thresholds):
        if thr is None:  # no bins (a linear model): the float's exact bits are the code
            codes[:, :, j] = visits[:, :, j].view(np.int64)
        else:
            codes[:, :, j] = np.searchsorted(thr, visits[:, :, j], side="left")
    codes[np.isnan(visits)] = -1
    return codes.reshape(len(states), -1)
