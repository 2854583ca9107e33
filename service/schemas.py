"""Request and response shapes of the HTTP API (docs/design.md section 6, a contract).

Separate from the internal objects (``models.decide.DecisionResult``, store rows) so internals
can change without changing the API. Requests are strict (unknown fields are rejected, strings
may not contain NUL, numbers must be finite) because everything accepted is stored and later
replayed as an event log: garbage in would be a bad training row out.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
)

from features.timeutil import TS_ISO_PATTERN, TS_MAX, TS_MIN, parse_ts

MAX_BATCH = 1000
_NO_NUL = r"^[^\x00]*$"

UserId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_NO_NUL)]
StepId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_NO_NUL)]
DecisionId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_NUL)]
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_NUL)]
# Strict branches: a numeric string stays a string (and obeys maxLength), true stays a bool.
ContextValue = (
    Annotated[bool, Field(strict=True)]
    | Annotated[int, Field(strict=True, ge=-(2**53), le=2**53)]
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]
    | Annotated[str, StringConstraints(strict=True, max_length=256, pattern=_NO_NUL)]
    | None
)
# pydantic would document the key pattern as ``patternProperties`` (leaving other keys
# unconstrained); ``propertyNames`` says what is actually enforced.
Context = Annotated[
    dict[ContextKey, ContextValue],
    Field(max_length=32),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": 32,
            "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": _NO_NUL},
            "additionalProperties": {
                "anyOf": [
                    {"type": "boolean"},
                    {"type": "integer", "minimum": -(2**53), "maximum": 2**53},
                    {"type": "number"},
                    {"type": "string", "maxLength": 256, "pattern": _NO_NUL},
                    {"type": "null"},
                ]
            },
            "description": "Flat context (e.g. channel, device): scalar values only",
            "examples": [{"channel": "email", "device": "mobile"}],
        }
    ),
]
Outcome = Literal["accepted", "declined", "dropped"]

Timestamp = Annotated[
    float,
    BeforeValidator(parse_ts),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time", "pattern": TS_ISO_PATTERN},
                {"type": "number", "minimum": TS_MIN, "maximum": TS_MAX},
            ],
            "description": "ISO-8601 (offsets allowed, UTC if none) or epoch seconds, in the "
            "years 1970 to 2099",
            "examples": ["2025-03-04T10:11:12Z"],
        }
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NextStepRequest(_Request):
    """Ask for the next step of one user; ``ts`` (default now) is "now" for this decision."""

    user_id: UserId
    context: Context = Field(default_factory=dict)
    ts: Timestamp | None = None
    candidates: list[StepId] | None = Field(default=None, max_length=MAX_BATCH)
    explain: StrictBool = Field(  # strict: "explain": 0 or "true" is a 422, as the schema says
        default=False,
        description="Add an explanation (top feature contributions of the chosen step)",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u123",
                    "context": {"channel": "email", "device": "mobile"},
                    "ts": "2025-03-04T10:11:12Z",
                    "candidates": ["watch_clip", "create_account"],
                }
            ]
        },
    )


class BatchRequest(_Request):
    """Up to 1,000 next-step requests answered in order."""

    requests: list[NextStepRequest] = Field(min_length=1, max_length=MAX_BATCH)


class DecisionOutcomeRequest(_Request):
    """The outcome of an offer this service made (``ts`` defaults to the decision's ts)."""

    decision_id: DecisionId
    outcome: Outcome
    ts: Timestamp | None = None


class OrganicOutcomeRequest(_Request):
    """An outcome of an offer that did not come from this service (``ts`` defaults to now)."""

    user_id: UserId
    step: StepId
    outcome: Outcome
    ts: Timestamp | None = None
    context: Context | None = None


OutcomeRequest = DecisionOutcomeRequest | OrganicOutcomeRequest


# -- responses (documentation and tests; the hot path writes the same fields with orjson) -----
_SCORE = (
    "The policy's own ranking value of this candidate (higher is better for that policy). "
    "planner: the expected value of reaching a goal if this step is offered now, looking ahead "
    "over the catalog; among candidates within a small tolerance of the best score the one "
    "with the least effort is chosen, so the chosen step can have a slightly lower score than "
    "another candidate (the smallest useful next action). greedy: p_accept. ladder: minus the "
    "effort. big_ask: 1 for a goal minus effort/1000. random: 0. With exploration the step is "
    "drawn at random (see propensity), not always the best score."
)


class CandidateOut(BaseModel):
    """One eligible step the policy considered."""

    step: str = Field(description="Step id from the catalog (GET /v1/steps).")
    p_accept: float | None = Field(
        description="Readiness: the model's probability that this user accepts this step now "
        "(calibrated); null when no model is loaded."
    )
    score: float = Field(description=_SCORE)


class SuppressedOut(BaseModel):
    """A step a guardrail held back, and the rule (cooldown, max_asks, user_cap, pause)."""

    step: str
    rule: str


class Decision(BaseModel):
    """One decision. ``step`` null means offer nothing; ``reason`` then says why."""

    decision_id: str = Field(
        description="Id of this decision: report its outcome with POST /v1/outcomes."
    )
    user_id: str = Field(description="The user the decision is for.")
    step: str | None = Field(
        description="The step to offer now (a catalog step id), or null to offer nothing."
    )
    stage: str | None = Field(
        description="Funnel stage of the step: start, deliver, guide, build or convert (a goal)."
    )
    effort: float | None = Field(description="The step's effort from the catalog (the ask size).")
    p_accept: float | None = Field(
        description="Readiness of the chosen step: the model's probability that the user accepts "
        "it now; null without a model."
    )
    propensity: float | None = Field(
        description="Exact probability with which the policy chose this step (1 for a "
        "deterministic choice); logged for off-policy evaluation."
    )
    explored: bool = Field(
        description="True when exploration picked the step instead of the policy's best choice."
    )
    policy: str = Field(
        description="Policy that decided (planner, greedy, ladder, big_ask, random); ladder when "
        "a model-based policy has no model."
    )
    arm: str = Field(description="Experiment arm the user is assigned to (sticky per user).")
    model_version: str | None = Field(
        description="Registered model version that scored the candidates; null without a model."
    )
    candidates: list[CandidateOut] = Field(
        description="Every eligible step the policy considered, with readiness and score."
    )
    reason: str | None = Field(
        description="Why nothing is offered when step is null (e.g. converted, no_eligible_step); "
        "null otherwise."
    )
    suppressed: list[SuppressedOut] = Field(
        default_factory=list,
        description="Eligible steps a guardrail held back before the policy chose.",
    )
    explanation: dict[str, Any] | None = Field(
        default=None, description="With explain=true: what drove the chosen step's readiness."
    )


class BatchItemProblem(BaseModel):
    """A request of a batch that could not be answered (the others still are)."""

    type: str
    title: str
    status: int
    detail: str | None = None


class BatchResponse(BaseModel):
    responses: list[Decision | BatchItemProblem]


class OutcomeOut(BaseModel):
    """A recorded outcome (an identical repeat returns the original record)."""

    id: int = Field(description="Id of the stored outcome.")
    decision_id: str | None = Field(
        description="The decision it answers; null for an organic outcome."
    )
    user_id: str = Field(description="The user.")
    step: str = Field(description="The step offered.")
    outcome: Outcome = Field(description="accepted, declined, or dropped (declined and left).")
    ts: str = Field(description="When it happened (ISO-8601 UTC).")
    converted: bool = Field(
        description="True when the user has now accepted a goal: nothing more will be offered."
    )


class HistoryItem(BaseModel):
    decision_id: str | None
    step: str
    outcome: Outcome
    ts: str


class UserView(BaseModel):
    """What the service knows about one user, and readiness for each eligible step."""

    user_id: str = Field(description="The user.")
    arm: str = Field(description="Experiment arm the user is assigned to.")
    history: list[HistoryItem] = Field(
        description="Outcomes the service was told, oldest first: one page of at most `limit`."
    )
    next_cursor: str | None = Field(
        default=None, description="Pass as ``cursor`` for the next page; null on the last."
    )
    accepted: list[str] = Field(description="Steps the user has accepted.")
    stage: str | None = Field(
        description="Highest funnel stage among the accepted steps; null before any accept."
    )
    converted: bool = Field(description="True once the user has accepted a goal.")
    eligible: dict[str, float | None] = Field(
        description="Readiness (p_accept) of each step the user may be offered now; values are "
        "null without a model."
    )
    model_version: str | None = Field(description="Model version that scored eligible.")


class StepOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    stage: str
    effort: float
    value: float
    requires: list[str]


class StepsOut(BaseModel):
    steps: list[StepOut]


class ExplorationOut(BaseModel):
    kind: Literal["epsilon", "softmax"]
    value: float


class ArmOut(BaseModel):
    name: str
    policy: str
    configured_policy: str
    exploration: ExplorationOut | None
    model: str | None
    model_version: str | None
    weight: float
    shadow_of: str | None = None  # a shadow arm: decides beside this arm, never served


class ExperimentOut(BaseModel):
    name: str
    arms: list[ArmOut]


class Health(BaseModel):
    status: Literal["ok"]


class ArmStatus(BaseModel):
    name: str
    policy: str
    model_version: str | None
    model_source: str | None
    note: str | None


class Readiness(BaseModel):
    """``model`` null and ``policy`` "ladder" mean: no model, serving the ladder baseline."""

    status: Literal["ready", "degraded", "unavailable"] = Field(
        description="ready: store and models usable. degraded (HTTP 200): an arm serves the "
        "ladder baseline because its model is missing, see reason. unavailable (503): the "
        "store does not answer."
    )
    store: str
    model: str | None
    policy: str
    arms: list[ArmStatus]
    notes: list[str]
    reason: str | None = Field(
        default=None, description="Why the status is not ready (null when it is)."
    )


class ReloadOut(BaseModel):
    status: Literal["reloaded", "unchanged"]
    arms: list[ArmStatus]


def decision_example() -> dict[str, Any]:
    return {
        "decision_id": "5f0c8e3a9d6b4c2f8e1a7b3c9d0e2f41",
        "user_id": "u123",
        "step": "create_account",
        "stage": "build",
        "effort": 5,
        "p_accept": 0.61,
        "propensity": 0.9,
        "explored": False,
        "policy": "planner",
        "arm": "champion",
        "model_version": "3",
        "candidates": [{"step": "create_account", "p_accept": 0.61, "score": 0.42}],
        "reason": None,
        "suppressed": [],
        "explanation": None,
    }
