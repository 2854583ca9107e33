"""Planning many users at once gives each exactly the answer it gets alone.

``Planner.plan_many`` expands the look-ahead of many roots together on columnar states
(``features.state.StateColumns``), scores equal feature rows once, and ``Decider.decide_many``
hands those plans to the per-user choice. These tests compare bit for bit against a reference:
the per-node look-ahead (``UserState.after`` one node at a time, one block per level) as the
planner computed it before it was batched, kept here verbatim, and against ``Decider.decide``
with a fresh decider per user.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left

import numpy as np
import pytest

from features.errors import InputError
from features.state import (
    ACCEPTED,
    CANDIDATE_FEATURES,
    DECLINED,
    HOUR,
    STATE_FEATURES,
    TIME_FEATURES,
    StateColumns,
    UserState,
    merged_context,
    time_features,
)
from models import planner as planner_module
from models.bundle import ModelScorer
from models.decide import Decider, DecisionRequest
from models.planner import Planner, _unique_rows
from models.policies import PolicyConfig
from simulation.synthetic import simulated_bundle
from simulation.worlds import load_world

T0 = 1.7e9


@pytest.fixture(scope="module", params=["ladder", "two_goals"])
def world_scorer(request):
    """``two_goals`` has prerequisites and two goals: the hardest eligibility rules."""
    world = load_world(request.param)
    bundle = simulated_bundle(world, 3000, 5, params={"n_estimators": 60})
    return world.catalog, ModelScorer(bundle, world.catalog)


# -- the reference: the look-ahead one node at a time ------------------------------------------
def _reference_plan(planner: Planner, state, candidates, now, context, scorer, cat):
    """``(q, p, greedy)`` exactly as the unbatched planner computed them."""
    gap = planner._gap_seconds(state, scorer)
    q, p = _ref_expand(
        planner, [(state, now)], [candidates], planner.depth, context, scorer, cat, gap
    )
    q, p = q[0], p[0]
    w = planner.value_weight
    if w and scorer.has_value:  # the learned value of each offer, beside the tree's
        q = (1.0 - w) * q + w * scorer.q_rows(
            scorer.block([(state, now)], [candidates], context, cat)
        )
    best = float(q.max())
    efforts = np.asarray([cat.efforts[i] for i in candidates])
    near = np.flatnonzero(q >= best * (1.0 - planner.relative_tolerance) - planner.tolerance)
    k = int(near[np.lexsort((near, efforts[near]))[0]])
    return q, p, k


def _ref_expand(planner, nodes, cands, depth, context, scorer, cat, gap):
    if not any(cands):
        return [np.zeros(0) for _ in nodes], [np.zeros(0) for _ in nodes]
    X = scorer.block(nodes, cands, context, cat)
    pa = scorer.p_accept_rows(X)
    pd = scorer.p_drop_rows(X)
    pb = scorer.p_back_rows(X)
    flat_steps = [s for cs in cands for s in cs]
    is_goal = np.array([(cat.goal_mask >> s) & 1 for s in flat_steps], dtype=bool)
    reward = np.array([cat.goal_rewards[s] for s in flat_steps])
    children = []
    acc_idx = np.full(len(flat_steps), -1)
    dec_idx = np.full(len(flat_steps), -1)
    j = 0
    for (st, t), cs in zip(nodes, cands, strict=True):
        for s in cs:
            if not (cat.goal_mask >> s) & 1:
                acc_idx[j] = len(children)
                children.append((st.after(cat, s, ACCEPTED, t), t + gap))
            dec_idx[j] = len(children)
            children.append((st.after(cat, s, DECLINED, t), t + gap))
            j += 1
    if depth <= 1:
        v = _ref_chain(planner, children, context, scorer, cat, gap)
    else:
        child_cands = [cat.eligible_indices(c.accepted_mask) for c, _ in children]
        cq, _ = _ref_expand(planner, children, child_cands, depth - 1, context, scorer, cat, gap)
        v = np.array([float(c.max()) if len(c) else 0.0 for c in cq])
    v_acc = np.where(acc_idx >= 0, v[np.maximum(acc_idx, 0)], 0.0)
    v_dec = v[dec_idx]
    d = planner.discount
    q = pa * np.where(is_goal, reward, d * pb * v_acc) + (1.0 - pa) * (1.0 - pd) * d * v_dec
    out_q, out_p, i = [], [], 0
    for cs in cands:
        out_q.append(q[i : i + len(cs)])
        out_p.append(pa[i : i + len(cs)])
        i += len(cs)
    return out_q, out_p


def _ref_chain(planner, nodes, context, scorer, cat, gap):
    """The best of the walks per leaf: up the ladder, by the biggest warm-up and, where a goal
    requires other steps, the cheapest of the steps some goal needs first. A walk whose first
    warm-up is the ladder's is not walked (it only asks the leaf's goals)."""
    needed = _needed_by_goals(cat)

    def ladder(s: int) -> tuple:
        return (cat.efforts[s], s)

    orders = [lambda s: (-cat.efforts[s], -s)]
    if needed:
        orders.append(lambda s: (s not in needed, cat.efforts[s], s))
    walks = [_ref_walk(planner, nodes, context, scorer, cat, gap, ladder)]
    walks += [_ref_walk(planner, nodes, context, scorer, cat, gap, o, ladder) for o in orders]
    return np.max(walks, axis=0)


def _needed_by_goals(cat) -> set[int]:
    """Steps some goal requires, directly or through other steps (by id, one step at a time)."""
    needed: set[int] = set()
    todo = [r for g in cat.goal_indices for r in cat.steps[g].requires]
    while todo:
        i = cat.index[todo.pop()]
        if i not in needed:
            needed.add(i)
            todo.extend(cat.steps[i].requires)
    return needed


def _ref_walk(planner, nodes, context, scorer, cat, gap, order, unless_first=None):
    n = len(nodes)
    best = np.zeros(n)
    reach = np.ones(n)
    states = [st for st, _ in nodes]
    times = [t for _, t in nodes]
    active = list(range(n))
    for level in range(planner.chain + 1):
        if not active:
            break
        chain_nodes, chain_cands, meta = [], [], []
        for i in active:
            elig = cat.eligible_indices(states[i].accepted_mask)
            goals = [s for s in elig if (cat.goal_mask >> s) & 1]
            rest = [s for s in elig if not (cat.goal_mask >> s) & 1]
            step = min(rest, key=order) if rest else None
            if level == 0 and unless_first and rest and step == min(rest, key=unless_first):
                step = None
            chain_nodes.append((states[i], times[i]))
            chain_cands.append(goals + ([step] if step is not None else []))
            meta.append((i, goals, step))
        if not any(chain_cands):
            break
        X = scorer.block(chain_nodes, chain_cands, context, cat)
        pa = scorer.p_accept_rows(X)
        pb = scorer.p_back_rows(X)
        stays = (1.0 - pa) * (1.0 - scorer.p_drop_rows(X))
        pa = pa * (1.0 + stays * planner.retry * planner.discount)
        r = 0
        nxt = []
        for i, goals, step in meta:
            for g in goals:
                best[i] = max(best[i], reach[i] * pa[r] * cat.goal_rewards[g])
                r += 1
            if step is not None:
                reach[i] *= pa[r] * pb[r] * planner.discount
                states[i] = states[i].after(cat, step, ACCEPTED, times[i])
                times[i] += gap
                r += 1
                if reach[i] > best[i]:
                    nxt.append(i)
        active = nxt
    return best


def _reference_key(planner: Planner, state, candidates, now, context, scorer, cat, gap) -> tuple:
    """``Planner.cache_key`` as it was computed one root and one value at a time."""
    splits = scorer.split_lists
    ctx = scorer.spec.encode_merged(state.context, context)
    base = len(STATE_FEATURES) + len(CANDIDATE_FEATURES)
    ctx_key = tuple(
        None if v != v else v if splits[base + j] is None else bisect_left(splits[base + j], v)
        for j, v in enumerate(ctx)
    )
    col = STATE_FEATURES.index(TIME_FEATURES[0])
    thresholds = splits[col : col + len(TIME_FEATURES)]
    rows = [time_features(state.n_asks, state.first_ts, state.last_ts, state.prev_ts, now)]
    first = state.first_ts if state.n_asks else now
    prev, last, t = state.last_ts, now, now
    for d in range(1, planner.depth + planner.chain + 1):
        t = t + gap
        rows.append(time_features(state.n_asks + d, first, last, prev, t))
        prev, last = last, t
    time_key = tuple(
        -1 if v != v else bisect_left(thr, v)
        for row in rows
        for v, thr in zip(row, thresholds, strict=True)
    )
    return (
        id(scorer),
        id(cat),
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
        cat.available(merged_context(state.context, context)),  # available_when: -1 = all
    )


# -- random users ------------------------------------------------------------------------------
def _history(cat, rng: np.random.Generator) -> tuple[UserState, float]:
    """A random history at a random pace (the planner's gap is the user's own pace)."""
    state = UserState()
    t = T0 + float(rng.uniform(0, 30 * 24)) * HOUR
    pace = float(rng.choice([0.02, 0.3, 2.0, 26.0, 300.0])) * HOUR
    for _ in range(int(rng.integers(0, 8))):
        elig = cat.eligible_indices(state.accepted_mask)
        if not elig:
            break
        step = int(rng.choice(elig))
        outcome = ACCEPTED if rng.random() < 0.55 else DECLINED
        ctx = {"channel": str(rng.choice(["email", "search", "social", "tv"]))}
        if rng.random() < 0.3:
            ctx["device"] = str(rng.choice(["mobile", "desktop"]))
        state.apply(cat, step, outcome, t, ctx)
        t += pace * float(rng.uniform(0.5, 1.5))
    return state, t + float(rng.choice([0.0, 0.01, 1.0, 30.0])) * HOUR


def _context(rng: np.random.Generator) -> dict:
    return [
        {},
        {"channel": "email"},
        {"channel": "social", "device": "desktop"},
        {"device": "mobile", "channel": None},
        {"channel": "never-seen"},
    ][int(rng.integers(0, 5))]


def _roots(cat, n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    roots = []
    while len(roots) < n:
        state, now = _history(cat, rng)
        cands = cat.eligible_indices(state.accepted_mask)
        if not cands:
            continue
        if len(cands) > 1 and rng.random() < 0.3:  # a request naming some candidates
            size = int(rng.integers(1, len(cands)))
            cands = [int(c) for c in rng.choice(cands, size=size, replace=False)]  # any order
        roots.append((state, cands, now, _context(rng)))
    roots += roots[:: n // 10]  # some users twice in one batch
    return roots


@pytest.mark.parametrize("depth", [1, 2])
def test_plan_many_equals_the_node_by_node_look_ahead(world_scorer, depth) -> None:
    cat, scorer = world_scorer
    roots = _roots(cat, 120 if depth == 2 else 300, seed=depth)
    planner = Planner(depth=depth).bind(scorer, cat)
    planned = planner.plan_many(roots, scorer, cat)
    assert len(planned) == len(roots)
    for root, (out, p) in zip(roots, planned, strict=True):
        q_ref, p_ref, k_ref = _reference_plan(planner, *root, scorer, cat)
        np.testing.assert_array_equal(out.scores, q_ref)
        np.testing.assert_array_equal(p, p_ref)
        assert out.greedy == k_ref
        assert out.probs[k_ref] == 1.0
        alone = Planner(depth=depth).bind(scorer, cat)._plan(*root, scorer, cat)  # n = 1
        np.testing.assert_array_equal(alone[0].scores, q_ref)
        np.testing.assert_array_equal(alone[1], p_ref)
    assert len(planner._cache) < len(roots)  # repeated users were planned once
    gaps = [planner._gap_seconds(r[0], scorer) for r in roots]
    keys, _ = planner._keys(roots, gaps, scorer, cat)  # the batched key is the per-value key
    for root, gap, key in zip(roots, gaps, keys, strict=True):
        assert key == _reference_key(planner, *root, scorer, cat, gap)
        assert key == planner.cache_key(*root, scorer, cat, gap)
    again = planner.plan_many(roots, scorer, cat)  # now all from the cache
    assert all(a[0] is b[0] for a, b in zip(again, planned, strict=True))


def test_state_columns_follow_user_state_after(world_scorer) -> None:
    cat, _ = world_scorer
    rng = np.random.default_rng(7)
    states = [_history(cat, rng)[0] for _ in range(60)]
    cols = StateColumns.from_states(states, cat.n)
    parent, step, accepted, ts = [], [], [], []
    for i, st in enumerate(states):
        for s in cat.eligible_indices(st.accepted_mask):
            for acc in (True, False):
                parent.append(i)
                step.append(s)
                accepted.append(acc)
                ts.append(T0 + 1000.0 * i + s)
    kids = cols.after(cat, np.array(parent), np.array(step), np.array(accepted), np.array(ts))
    now = np.array(ts) + 7777.7
    vectors = kids.vectors(now)
    for r, (i, s, acc, t) in enumerate(zip(parent, step, accepted, ts, strict=True)):
        want = states[i].after(cat, s, ACCEPTED if acc else DECLINED, t)
        np.testing.assert_array_equal(vectors[r], np.array(want.state_vector(now[r])))
        assert np.flatnonzero(kids.accepted[r]).tolist() == [
            j for j in range(cat.n) if (want.accepted_mask >> j) & 1
        ]
        assert {j: int(c) for j, c in enumerate(kids.offers[r]) if c} == want.step_offers
        assert {j: int(c) for j, c in enumerate(kids.declines[r]) if c} == want.step_declines


def test_unique_rows_scores_equal_rows_once(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 4, (50, 6)).astype(np.float64)
    base[rng.random(base.shape) < 0.2] = np.nan
    base[0, 0], base[1, 0] = 0.0, -0.0  # different bits: kept apart
    X = base[rng.integers(0, 50, 400)]
    idx, inv = _unique_rows(X)
    np.testing.assert_array_equal(X[idx][inv].view(np.uint64), X.view(np.uint64))
    assert len(idx) == len(np.unique(X.view(np.uint64), axis=0))
    # a hash that collides all the time (the sum of the bits): rows must still stay apart
    monkeypatch.setattr(planner_module, "_GOLDEN", np.uint64(0))
    Y = np.array([[1.0, 2.0], [2.0, 1.0], [1.0, 2.0], [2.0, 1.0]])
    idx, inv = _unique_rows(Y)
    np.testing.assert_array_equal(Y[idx][inv], Y)
    assert inv[0] == inv[2] and inv[0] != inv[1] and inv[0] != inv[3]


def _random_requests(cat, n: int, seed: int) -> list[DecisionRequest]:
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        state, now = _history(cat, rng)
        if rng.random() < 0.15:  # converted users are refused before the policy
            goal = cat.goal_indices[0]
            state.apply(cat, goal, ACCEPTED, now - HOUR)
        candidates = None
        roll = rng.random()
        if roll < 0.2:
            candidates = [str(c) for c in rng.choice(cat.ids, size=2, replace=False)]
        elif roll < 0.23:
            candidates = ["no-such-step"]
        history = state if rng.random() < 0.5 else _rows(cat, state)
        out.append(
            DecisionRequest(
                f"user-{u % (n - 7)}",  # a few user ids twice
                history,
                now,
                _context(rng),
                candidates,
                explain=bool(rng.random() < 0.05),
            )
        )
    return out


def _rows(cat, state: UserState) -> list:
    """A history as store rows that folds back into ``state``'s offers (for ``fold_history``)."""
    rows = []
    for s, t in sorted(state.step_last_ts.items(), key=lambda x: x[1]):
        outcome = ACCEPTED if (state.accepted_mask >> s) & 1 else DECLINED
        rows.append((cat.ids[s], outcome, t, {"channel": "email"}))
    return rows


def test_p_accept_many_equals_p_accept(world_scorer) -> None:
    """Readiness of many users in one model call, bit for bit each user's own ``p_accept``
    (what ``decide_many`` hands to every policy but the planner)."""
    cat, scorer = world_scorer
    roots = _roots(cat, 300, seed=11)
    got = scorer.p_accept_many(roots)
    assert len(got) == len(roots)
    for (state, cands, now, ctx), p in zip(roots, got, strict=True):
        np.testing.assert_array_equal(p, scorer.p_accept(state, cands, now, ctx))
    assert scorer.p_accept_many([]) == []


@pytest.mark.parametrize(
    "policy",
    [
        "planner",
        "planner+epsilon=0.2",
        "planner+softmax=0.05",
        "greedy",
        "greedy+epsilon=0.2",
        "ladder",
    ],
)
def test_decide_many_equals_decide(world_scorer, policy) -> None:
    cat, scorer = world_scorer
    config = PolicyConfig.parse(policy)
    requests = _random_requests(cat, 250, seed=len(policy))
    batched = Decider(cat, config, scorer=scorer, model_version="v", seed=4)
    got = batched.decide_many(requests)
    n_planned = n_errors = n_explored = 0
    for req, res in zip(requests, got, strict=True):
        fresh = Decider(cat, config, scorer=scorer, model_version="v", seed=4)
        try:
            want = fresh.decide(
                req.user_id,
                req.history,
                now=req.now,
                context=req.context,
                candidates=req.candidates,
                explain=req.explain,
            )
        except InputError as exc:
            assert isinstance(res, InputError) and res.message == exc.message
            n_errors += 1
            continue
        assert dataclasses.asdict(res) == dataclasses.asdict(want), req.user_id
        n_planned += res.step is not None
        n_explored += res.explored
    assert n_errors > 0 and n_planned > 100
    assert {r.reason for r in got if not isinstance(r, InputError)} >= {None, "converted"}
    if "epsilon" in policy:
        assert n_explored > 0  # the seeded draws happened, and agreed
    # without the candidate scores (what ``recommend`` asks for): the same decisions
    lean = Decider(cat, config, scorer=scorer, model_version="v", seed=4)
    for res, bare in zip(got, lean.decide_many(requests, scores=False), strict=True):
        if isinstance(res, InputError):
            assert isinstance(bare, InputError)
            continue
        assert bare.candidates == [] and (bare.step is None or res.candidates)
        assert dataclasses.replace(bare, candidates=res.candidates) == res
