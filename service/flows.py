"""What each endpoint does, as plain functions of (store, deciders, request).

Handlers parse and call exactly one function here; everything that must be right under
concurrency lives in this file: the idempotency protocol (look up the key, do the effect and
store the response in ONE transaction, and on a unique-constraint race re-read instead of
failing), the one-outcome-per-decision rule and the converted-user rule. Responses are rendered
to bytes here, once, so an idempotent replay is byte-for-byte the first response.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from features.catalog import STAGES, Catalog
from features.errors import InputError
from features.state import ACCEPTED, UserState
from features.timeutil import iso
from models.decide import DecisionRequest, DecisionResult, Ready
from service import user_state
from service.ids import new_decision_id, new_decision_ids
from service.metrics import Metrics
from service.plan_batcher import LoopPlanBatcher
from service.problems import Conflict, NotFound, Unprocessable, clean_text, problem_dict
from service.runtime import ArmRuntime, Deciders
from service.schemas import (
    DecisionOutcomeRequest,
    NextStepRequest,
    OrganicOutcomeRequest,
    OutcomeRequest,
)
from service.store import IdempotentRecord, Store, dumps, idempotency_row

ROUTE_NEXT_STEP = "next-step"
ROUTE_BATCH = "next-step:batch"
ROUTE_OUTCOMES = "outcomes"
T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """A rendered response: status and exact body bytes (``replayed`` for a repeated key)."""

    status: int
    body: bytes
    replayed: bool = False


def request_hash(route: str, payload: Mapping[str, Any]) -> str:
    """Fingerprint of a *validated* request, so equivalent spellings (key order, ISO vs epoch
    ts) count as the same request for idempotency."""
    raw = orjson.dumps({"route": route, "body": payload}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


def replay(rec: IdempotentRecord, digest: str, metrics: Metrics | None) -> Reply:
    """The stored response of a key (409 if the key came with another request)."""
    if rec.request_hash != digest:
        raise Conflict("this Idempotency-Key was already used with a different request")
    if not rec.body:  # processed, but its response was too large to keep (store.py)
        raise Conflict(
            "this Idempotency-Key was already processed; its response was too large to keep "
            "for a replay (the decisions are stored: GET /v1/users/{user_id})"
        )
    if metrics is not None:
        metrics.idempotent_replays.inc()
    return Reply(rec.status, rec.body, replayed=True)


@dataclass(frozen=True)
class Idempotency:
    """The idempotency protocol of one keyed request, the same for next-step, batch and
    outcomes: the key's stored response, byte for byte (409 if the key came with another
    request); else the effect, with the key's record (``record``) stored in the effect's own
    transaction; and when a concurrent request with the same key committed first (the effect
    fails on the key's unique constraint), that request's response instead of an error."""

    store: Store
    key: str
    route: str
    digest: str  # ``request_hash`` of the validated request
    metrics: Metrics | None = None

    def stored(self) -> Reply | None:
        """The key's stored response (one indexed read on the hot cursor), or None."""
        rec = self.store.idempotent(self.key, self.route)
        return None if rec is None else replay(rec, self.digest, self.metrics)

    def record(self, status: int, body: bytes) -> dict[str, Any]:
        """The ``idempotency`` row that remembers this request's response."""
        return idempotency_row(self.key, self.route, self.digest, status, body)

    def run(self, effect: Callable[[], Reply]) -> Reply:
        """``effect()`` (which stores ``record`` with its writes) unless the key has a response."""
        found = self.stored()
        if found is not None:
            return found
        try:
            return effect()
        except self.store.integrity_errors:
            found = self.stored()
            if found is None:
                raise
            return found

    async def run_async(self, effect: Callable[[], Awaitable[Reply]]) -> Reply:
        """``run`` for an effect on the event loop (the reads as ``run_flow`` runs them)."""
        found = await run_flow(self.store, self.stored)
        if found is not None:
            return found
        try:
            return await effect()
        except self.store.integrity_errors:
            found = await run_flow(self.store, self.stored)
            if found is None:
                raise
            return found


async def run_flow(store: Store, flow: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a flow inline on the event loop when the store is embedded (SQLite: each call is a
    few hundred microseconds of local work, less than the thread hop around it), in the thread
    pool when it talks to a server over the network (PostgreSQL), where a slow or unreachable
    database must not stall every other request."""
    if store.embedded:
        return flow(*args, **kwargs)
    return await run_in_threadpool(flow, *args, **kwargs)


def check_context(
    allowed: frozenset[str] | None, context: Mapping[str, Any] | None, loc: Sequence[Any]
) -> None:
    """422 naming the first context key that ``NEXTSTEP_CONTEXT_KEYS`` does not declare."""
    if allowed is None or not context:
        return
    for k in context:
        if k not in allowed:
            raise Unprocessable(
                f"context key {clean_text(k, 64)!r} is not declared (NEXTSTEP_CONTEXT_KEYS)",
                errors=[
                    {"loc": [*loc, clean_text(k, 64)], "msg": "undeclared", "type": "context_key"}
                ],
            )


# -- next step -------------------------------------------------------------------------------
def _num(x: float | None) -> float | int | None:
    """Integral floats as ints (``"effort": 5`` as in the contract example)."""
    if x is None:
        return None
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else x


def _decide(
    arm: ArmRuntime, req: NextStepRequest, state: UserState | None, now: float
) -> DecisionResult:
    """``Decider.decide`` for a next-step request (an unknown candidate is the 422)."""
    ready = _ready(arm, req, state, now)
    return ready if isinstance(ready, DecisionResult) else arm.decider.finish(ready, req.explain)


def _ready(
    arm: ArmRuntime, req: NextStepRequest, state: UserState | None, now: float
) -> DecisionResult | Ready:
    """``Decider.ready`` for a next-step request, a rejected request as the 422."""
    try:
        return arm.decider.ready(_decision_request(req, state, now))
    except InputError as exc:
        raise _unprocessable(exc) from None


def _shadow_rows(
    deciders: Deciders,
    arm: ArmRuntime,
    req: NextStepRequest,
    state: UserState | None,
    now: float,
    decision_id: str,
) -> list[dict[str, Any]]:
    """What each shadow of the serving arm would have offered (never served, only logged).

    A shadow that fails never fails the served request: its row is simply missing.
    """
    rows: list[dict[str, Any]] = []
    for shadow in deciders.shadows(arm.arm.name):
        try:
            res = _decide(shadow, req, state, now)
        except Exception:  # a shadow must never break the served decision
            continue
        rows.append(_shadow_row(decision_id, shadow, res))
    return rows


def _shadow_row(decision_id: str, shadow: ArmRuntime, res: DecisionResult) -> dict[str, Any]:
    return {
        "decision_id": decision_id,
        "arm": shadow.arm.name,
        "policy": res.policy,
        "model_version": res.model_version,
        "step": res.step,
        "propensity": res.propensity,
    }


def _candidates(result: DecisionResult) -> tuple[list[dict[str, Any]], str]:
    """The response's candidate list and its stored JSON."""
    candidates = [
        {"step": c.step, "p_accept": c.p_accept, "score": c.score} for c in result.candidates
    ]
    return candidates, dumps(candidates)


def _decision(
    arm: ArmRuntime,
    req: NextStepRequest,
    result: DecisionResult,
    now: float,
    digest: str | None,
    rendered: tuple[list[dict[str, Any]], str] | None = None,
    decision_id: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored row and the response payload of one decision (``rendered``: the candidates
    of a decision shared by several requests of a batch, rendered once; ``decision_id``: one
    of a batch's ``new_decision_ids``)."""
    decision_id = decision_id or new_decision_id()
    candidates, candidates_json = rendered or _candidates(result)
    payload = {
        "decision_id": decision_id,
        "user_id": req.user_id,
        "step": result.step,
        "stage": result.stage,
        "effort": _num(result.effort),
        "p_accept": result.p_accept,
        "propensity": result.propensity,
        "explored": bool(result.explored),
        "policy": result.policy,
        "arm": arm.arm.name,
        "model_version": result.model_version,
        "candidates": candidates,
        "reason": result.reason,
        "suppressed": [{"step": x["step"], "rule": x["rule"]} for x in result.suppressed],
    }
    if req.explain:  # only when asked for (null without a model); absent otherwise
        payload["explanation"] = result.explanation
    row = {
        "decision_id": decision_id,
        "user_id": req.user_id,
        "ts": now,
        "created_at": time.time(),
        "step": result.step,
        "arm": arm.arm.name,
        "policy": result.policy,
        "model_version": result.model_version,
        "propensity": result.propensity,
        "explored": bool(result.explored),
        "p_accept": result.p_accept,
        "context": dumps(req.context) if req.context else None,
        "candidates": candidates_json,
        "reason": result.reason,
        "request_hash": digest,
    }
    return row, payload


def _count(metrics: Metrics | None, payload: Mapping[str, Any]) -> None:
    if metrics is not None:
        metrics.count_decisions(payload["arm"], payload["policy"], payload["step"])


@dataclass(frozen=True)
class PreparedDecision:
    """A decision made but not yet stored: its row, its shadows' rows and the response."""

    row: dict[str, Any]
    shadow_rows: list[dict[str, Any]]
    payload: dict[str, Any]
    body: bytes
    context: Mapping[str, Any] | None = None  # the request's, for the watch's drift window


def request_digest(req: NextStepRequest) -> str:
    # ``explain`` joins the fingerprint only when set, so keys stored before it existed still match
    return request_hash(
        ROUTE_NEXT_STEP, req.model_dump(mode="json", exclude=None if req.explain else {"explain"})
    )


async def prepare_next_step(
    deciders: Deciders,
    req: NextStepRequest,
    state: UserState | None,
    planning: LoopPlanBatcher,
    digest: str | None = None,
) -> PreparedDecision:
    """The decision half of a next-step, on the event loop.

    The caller read ``state`` (``user_state.read_state``: None for a new user) and stores
    ``row`` and ``shadow_rows`` (``Store.commit_decisions``) before answering with
    ``decided``; nothing here writes. A planner miss waits for ``planning``, which plans it
    together with the misses of concurrent requests (the same plan it would get alone);
    everything else is ``Decider.decide``. ``digest`` (``request_digest``) is the request's
    fingerprint when it carries an Idempotency-Key; without a key there is nothing to compare
    a retry with, so the row has none (as in a batch).
    """
    now = req.ts if req.ts is not None else time.time()
    arm = deciders.for_user(req.user_id)
    result = await _decide_on_loop(arm, req, state, now, planning)
    row, payload = _decision(arm, req, result, now, digest)
    shadow_rows: list[dict[str, Any]] = []
    for shadow in deciders.shadows(arm.arm.name):  # what each would have offered, logged only
        try:
            res = await _decide_on_loop(shadow, req, state, now, planning)
        except Exception:  # a shadow must never break the served decision
            continue
        shadow_rows.append(_shadow_row(row["decision_id"], shadow, res))
    return PreparedDecision(row, shadow_rows, payload, orjson.dumps(payload), req.context)


async def _decide_on_loop(
    arm: ArmRuntime,
    req: NextStepRequest,
    state: UserState | None,
    now: float,
    planning: LoopPlanBatcher,
) -> DecisionResult:
    """``_decide``, with a planner miss planned by ``planning`` (with concurrent misses)."""
    ready = _ready(arm, req, state, now)
    if isinstance(ready, DecisionResult):
        return ready
    job = arm.decider.plan_job(ready)
    if job is not None:
        await planning.plan(job)
    return arm.decider.finish(ready, req.explain)


def decided(prepared: PreparedDecision, metrics: Metrics | None) -> Reply:
    """The reply for a stored ``PreparedDecision`` (and its count in the metrics)."""
    _count(metrics, prepared.payload)
    if metrics is not None:
        metrics.watch.decided((prepared.row,), (prepared.context,))
    return Reply(200, prepared.body)


async def serve_next_step(
    store: Store,
    deciders: Deciders,
    metrics: Metrics | None,
    planning: LoopPlanBatcher,
    req: NextStepRequest,
) -> Reply:
    """A key-less next-step: read, decide, commit (shared commits on a server), then answer.

    The route and ``service.fast_lane`` both call this, so they answer alike."""
    prepared = await _prepare_from_store(store, deciders, planning, req, None)
    await store.commit_decisions([prepared.row], prepared.shadow_rows)
    return decided(prepared, metrics)


async def serve_keyed_next_step(
    store: Store,
    deciders: Deciders,
    metrics: Metrics | None,
    planning: LoopPlanBatcher,
    req: NextStepRequest,
    key: str,
) -> Reply:
    """A next-step with an Idempotency-Key (``Idempotency``): the decision row and the key's
    record are one commit, shared with concurrent requests like any decision's."""
    idem = Idempotency(store, key, ROUTE_NEXT_STEP, request_digest(req), metrics)

    async def effect() -> Reply:
        prepared = await _prepare_from_store(store, deciders, planning, req, idem.digest)
        record = idem.record(200, prepared.body)
        await store.commit_decisions([prepared.row], prepared.shadow_rows, [record])
        return decided(prepared, metrics)

    return await idem.run_async(effect)


async def _prepare_from_store(
    store: Store,
    deciders: Deciders,
    planning: LoopPlanBatcher,
    req: NextStepRequest,
    digest: str | None,
) -> PreparedDecision:
    """The user's stored state (one row, read as ``run_flow`` reads), then the decision on the
    event loop, where a planner miss is planned together with concurrent requests' misses."""
    catalog = deciders.primary.decider.catalog
    state = await run_flow(store, user_state.read_state, store, catalog, req.user_id)
    return await prepare_next_step(deciders, req, state, planning, digest)


def _same_input_key(
    arm: ArmRuntime, req: NextStepRequest, state: UserState | None, now: float
) -> tuple | None:
    """Requests of one batch with this key get the same decision when it is deterministic.

    A decision depends on the user only through their state and the seed of an exploration
    draw; when the policy puts probability 1 on one step (``propensity`` 1) no draw happens, so
    users with the same state, context, candidates and clock (typically many first visits
    from one campaign) share one computation. Under exploration they share the policy's
    distribution and each gets their own draw from it (``Decider.redraw``). Only users with
    nothing recorded are grouped: theirs is the common case, and comparing states would cost
    more than it saves.
    """
    if state is not None:
        return None
    return (
        arm.arm.name,
        orjson.dumps(req.context, option=orjson.OPT_SORT_KEYS),
        None if req.candidates is None else tuple(req.candidates),
        now,
        req.explain,
    )


def batch_digest(requests: Sequence[NextStepRequest]) -> str:
    """The fingerprint of a batch (``request_hash`` of its validated requests)."""
    return request_hash(ROUTE_BATCH, {"requests": [r.model_dump(mode="json") for r in requests]})


def next_step_batch(
    store: Store,
    deciders: Deciders,
    requests: Sequence[NextStepRequest],
    *,
    metrics: Metrics | None = None,
    idempotency_key: str | None = None,
) -> Reply:
    """Decide for many users: one read, one write, answers in request order (200).

    A request that cannot be answered (unknown candidate) gets a problem object in its place;
    the others are still decided and stored. Each arm decides its users with one
    ``Decider.decide_many`` (the planner's look-ahead for all of them in one pass); each
    answer is the one ``next-step`` would give that request alone.

    With an ``idempotency_key`` a retried batch gets the first response byte for byte (409
    with another batch) and decides nothing again: the key's record is stored in the same
    transaction as the decisions, and a concurrent retry that stored it first makes this
    commit fail, after which this call answers with that retry's response.
    """
    if idempotency_key is None:
        return _decide_batch(store, deciders, requests, metrics, None)
    idem = Idempotency(store, idempotency_key, ROUTE_BATCH, batch_digest(requests), metrics)
    return idem.run(lambda: _decide_batch(store, deciders, requests, metrics, idem))


def _decide_batch(
    store: Store,
    deciders: Deciders,
    requests: Sequence[NextStepRequest],
    metrics: Metrics | None,
    idem: Idempotency | None,
) -> Reply:
    """``next_step_batch``'s decisions and their one write (with ``idem``'s record)."""
    # one stored state per distinct user, however many requests name them
    states = user_state.read_states(store, _catalog(deciders), [r.user_id for r in requests])
    default_now = time.time()
    n = len(requests)
    nows: list[float] = []
    arms: list[ArmRuntime] = []
    keys: list[tuple | None] = []
    first_of: dict[tuple, int] = {}  # same-input key -> the request decided for it
    by_arm: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
        now = req.ts if req.ts is not None else default_now
        arm = deciders.for_user(req.user_id)
        key = _same_input_key(arm, req, states.get(req.user_id), now)
        nows.append(now)
        arms.append(arm)
        keys.append(key)
        if key is not None:
            if key in first_of:
                continue  # decided with (or, when it drew at random, after) its first request
            first_of[key] = i
        by_arm.setdefault(arm.arm.name, []).append(i)
    decided: list[DecisionResult | InputError | None] = [None] * n
    for members in by_arm.values():
        batch = [
            _decision_request(requests[i], states.get(requests[i].user_id), nows[i])
            for i in members
        ]
        for i, res in zip(members, arms[members[0]].decider.decide_many(batch), strict=True):
            decided[i] = res
    answers: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    shadow_rows: list[dict[str, Any]] = []
    contexts: list[Mapping[str, Any] | None] = []  # aligned with rows, for the watch
    shadowed = {name for name in by_arm if deciders.shadows(name)}  # arms that have shadows
    same: dict[tuple, DecisionResult] = {}
    drawn: dict[tuple, DecisionResult] = {}  # exploring decisions later users redraw from
    rendered: dict[int, tuple[list[dict[str, Any]], str]] = {}  # by id of shared candidates
    ids = new_decision_ids(n)
    for i, req in enumerate(requests):
        now, arm, key = nows[i], arms[i], keys[i]
        state = states.get(req.user_id)
        try:
            result = decided[i]
            if result is None:  # a later request with a first request's input
                result = same.get(key)  # type: ignore[arg-type]
                if result is None:
                    template = drawn.get(key)  # type: ignore[arg-type]
                    result = (
                        _decide(arm, req, state, now)
                        if template is None
                        else arm.decider.redraw(template, req.user_id)
                    )
            elif isinstance(result, InputError):
                raise _unprocessable(result)
            if key is not None and result.propensity in (None, 1.0):
                same.setdefault(key, result)
            elif key is not None and result.draw is not None and not req.explain:
                drawn.setdefault(key, result)
        except Unprocessable as exc:
            answers.append(
                problem_dict(422, detail=exc.detail, type_="urn:nextstep:problem:validation")
            )
            continue
        if key is not None and (same.get(key) is result or key in drawn):
            shared = rendered.get(id(result.candidates))  # redraws share their template's
            if shared is None:
                shared = rendered[id(result.candidates)] = _candidates(result)
            row, payload = _decision(arm, req, result, now, None, shared, ids[i])
        else:
            row, payload = _decision(arm, req, result, now, None, None, ids[i])
        rows.append(row)
        contexts.append(req.context)
        if arm.arm.name in shadowed:
            shadow_rows.extend(_shadow_rows(deciders, arm, req, state, now, row["decision_id"]))
        answers.append(payload)
    body = orjson.dumps({"responses": answers})
    store.insert_decision_rows(rows, shadow_rows, () if idem is None else [idem.record(200, body)])
    if metrics is not None:  # what ``_count`` does per decision, one increment per label set
        counts = Counter(
            (p["arm"], p["policy"], p["step"] or "none") for p in answers if "decision_id" in p
        )
        for labels, k in counts.items():
            metrics.count_decisions(*labels, n=k)
        metrics.watch.decided(rows, contexts)
    return Reply(200, body)


def _decision_request(req: NextStepRequest, state: UserState | None, now: float) -> DecisionRequest:
    """A next-step request as ``Decider`` takes it (``_ready`` and ``Decider.decide_many``)."""
    return DecisionRequest(
        req.user_id,
        state if state is not None else UserState(),
        now,
        req.context,
        req.candidates,
        None,
        req.explain,
    )


def _catalog(deciders: Deciders) -> Catalog:
    """The catalog every arm decides over (one per service)."""
    return deciders.primary.decider.catalog


def _unprocessable(exc: InputError) -> Unprocessable:
    """The 422 for a request ``Decider`` rejects (an unknown candidate)."""
    return Unprocessable(
        exc.message,
        errors=[{"loc": ["body", "candidates"], "msg": exc.message, "type": "unknown_step"}],
    )


# -- outcomes --------------------------------------------------------------------------------
def _outcome_body(row: Mapping[str, Any], converted: bool) -> bytes:
    return orjson.dumps(
        {
            "id": int(row["id"]),
            "decision_id": row["decision_id"],
            "user_id": row["user_id"],
            "step": row["step"],
            "outcome": row["outcome"],
            "ts": iso(row["ts"]),
            "converted": converted,
        }
    )


def _existing_reply(
    store: Store, conn: Connection, catalog: Catalog, existing: Any, outcome: str
) -> Reply:
    """An identical repeat gets the original record (201); a different outcome is 409."""
    if existing.outcome != outcome:
        raise Conflict(
            f"decision {existing.decision_id!r} already has outcome {existing.outcome!r}"
        )
    state, _stored, _ts = user_state.state_in_transaction(store, conn, catalog, existing.user_id)
    return Reply(201, _outcome_body(existing._mapping, state.converted(catalog)))


def _apply_outcome(store: Store, conn: Connection, catalog: Catalog, req: OutcomeRequest) -> Reply:
    """Insert the outcome and fold it into the user's stored state, in ``conn``'s transaction
    (the converted rule reads that state: one row, not the user's history)."""
    goals = [s.id for s in catalog.goals]
    context: str | None = None
    folded_context: Any = None
    decision_id: str | None = None
    if isinstance(req, DecisionOutcomeRequest):
        decision = store.get_decision(conn, req.decision_id)
        if decision is None:
            raise NotFound(f"unknown decision {req.decision_id!r}")
        if decision.step is None:
            raise Conflict(
                f"decision {req.decision_id!r} offered nothing ({decision.reason}); "
                "it cannot have an outcome"
            )
        user_id, step, decision_id = decision.user_id, decision.step, req.decision_id
        ts = req.ts if req.ts is not None else decision.ts
        folded_context = orjson.loads(decision.context) if decision.context else None
        store.lock_user(conn, user_id)
        existing = store.outcome_of(conn, decision_id)
        if existing is not None:
            return _existing_reply(store, conn, catalog, existing, req.outcome)
    else:
        user_id, step = req.user_id, req.step
        ts = req.ts if req.ts is not None else time.time()
        context = dumps(req.context) if req.context else None
        folded_context = req.context or None
        store.lock_user(conn, user_id)
    current = user_state.state_in_transaction(store, conn, catalog, user_id)
    if current[0].converted(catalog):
        raise Conflict(f"user {user_id!r} has already converted; nothing more can be recorded")
    values = {
        "decision_id": decision_id,
        "user_id": user_id,
        "step": step,
        "outcome": req.outcome,
        "ts": ts,
        "created_at": time.time(),
        "context": context,
    }
    oid = store.insert_outcome(conn, values)
    event = (step, req.outcome, ts, folded_context)
    user_state.fold_outcome(store, conn, catalog, user_id, current, event)
    converted = req.outcome == ACCEPTED and step in goals
    return Reply(201, _outcome_body({**values, "id": oid}, converted))


def record_outcome(
    store: Store,
    catalog: Catalog,
    req: OutcomeRequest,
    *,
    idempotency_key: str | None = None,
    metrics: Metrics | None = None,
) -> Reply:
    """Record what the user did (201); 404 unknown decision, 409 conflicting outcome."""
    digest = request_hash(ROUTE_OUTCOMES, req.model_dump(mode="json"))
    if isinstance(req, OrganicOutcomeRequest) and req.step not in catalog.index:
        raise Unprocessable(
            f"unknown step {req.step!r}",
            errors=[{"loc": ["body", "step"], "msg": "not a catalog step", "type": "unknown_step"}],
        )
    idem = None
    if idempotency_key is not None:
        idem = Idempotency(store, idempotency_key, ROUTE_OUTCOMES, digest, metrics)

    def effect() -> Reply:
        with store.write() as conn:
            reply = _apply_outcome(store, conn, catalog, req)
            if idem is not None:
                store.put_idempotent(conn, idem.record(reply.status, reply.body))
        return reply

    try:
        reply = effect() if idem is None else idem.run(effect)
    except IntegrityError:
        # A concurrent outcome for the same decision won the race: answer as its retry would.
        if isinstance(req, DecisionOutcomeRequest):
            with store.read() as conn:
                existing = store.outcome_of(conn, req.decision_id)
                if existing is not None:
                    return _existing_reply(store, conn, catalog, existing, req.outcome)
        raise
    if reply.replayed:
        return reply
    if metrics is not None:
        source = "decision" if isinstance(req, DecisionOutcomeRequest) else "organic"
        metrics.outcomes.labels(req.outcome, source).inc()
        if isinstance(req, DecisionOutcomeRequest):  # calibration and delay (service.watch)
            metrics.watch.resolved(
                req.decision_id, req.outcome, req.ts, lambda d: decision_facts(store, d)
            )
    return reply


def decision_facts(store: Store, decision_id: str) -> tuple[str, str, float | None, float] | None:
    """(arm, step, p_accept, ts) of a stored decision that offered a step, else None: what
    the watch needs of a decision it did not see (another worker's, or before a restart)."""
    with store.read() as conn:
        row = store.get_decision(conn, decision_id)
    if row is None or row.step is None:
        return None
    return row.arm, row.step, row.p_accept, row.ts


# -- users -------------------------------------------------------------------------------------
USER_HISTORY_LIMIT = 100  # events per page of GET /v1/users/{id} unless ``limit`` says otherwise
USER_HISTORY_MAX = 1000  # the most events one page may return


CURSOR_PATTERN = r"^-?[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?_[0-9]{1,19}$"


def encode_cursor(ts: float, oid: int) -> str:
    """The ``next_cursor`` after the event ``(ts, id)``: ``"<ts>_<id>"``. Every string the
    route's pattern (``CURSOR_PATTERN``) admits is a position, so no valid input is refused."""
    return f"{ts!r}_{oid}"


def decode_cursor(cursor: str) -> tuple[float, int]:
    """``encode_cursor``'s input back (the route has checked ``CURSOR_PATTERN``), or a 422."""
    ts, _, oid = cursor.rpartition("_")
    try:
        value = float(ts)  # beyond float's range: the end (or start) of any history
        if math.isnan(value):
            raise ValueError
        value = max(-sys.float_info.max, min(value, sys.float_info.max))
        return value, min(int(oid), 2**63 - 1)  # ids are BIGINT
    except ValueError:
        raise Unprocessable(
            "cursor is not one this service returned",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "cursor"}],
        ) from None


def user_view(
    store: Store,
    deciders: Deciders,
    user_id: str,
    *,
    now: float | None = None,
    limit: int = USER_HISTORY_LIMIT,
    cursor: str | None = None,
) -> dict[str, Any]:
    """One page of the history (oldest first, at most ``limit`` events after ``cursor``), and
    from the stored state: accepted steps, stage, converted and readiness per eligible step.

    Bounded by design: one state row and one page of events, however long the history.
    ``next_cursor`` is null on the last page.
    """
    after = decode_cursor(cursor) if cursor is not None else None
    limit = max(1, min(limit, USER_HISTORY_MAX))
    arm = deciders.for_user(user_id)
    decider = arm.decider
    catalog = decider.catalog
    with store.read() as conn:
        page = store.history_page(conn, user_id, after, limit + 1)
        state, stored, last_ts = user_state.state_in_transaction(store, conn, catalog, user_id)
    more = len(page) > limit
    page = page[:limit]
    at = now if now is not None else (last_ts if stored else time.time())
    ids = catalog.ids
    accepted = [ids[i] for i in range(catalog.n) if (state.accepted_mask >> i) & 1]
    return {
        "user_id": user_id,
        "arm": arm.arm.name,
        "history": [
            {"decision_id": e.decision_id, "step": e.step, "outcome": e.outcome, "ts": iso(e.ts)}
            for _oid, e in page
        ],
        "next_cursor": encode_cursor(page[-1][1].ts, page[-1][0]) if more else None,
        "accepted": accepted,
        "stage": STAGES[state.stage_reached] if state.stage_reached >= 0 else None,
        "converted": state.converted(catalog),
        "eligible": decider.readiness(state, now=at),
        "model_version": decider.model_version,
    }
