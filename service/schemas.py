"""Request and response shapes of the HTTP API (DESIGN.md section 6, a contract).

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

from service.timeutil import MAX_TS, MIN_TS, parse_ts

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
                {"type": "string", "format": "date-time"},
                {"type": "number", "minimum": MIN_TS, "maximum": MAX_TS},
            ],
            "description": "ISO-8601 (offsets allowed, UTC if none) or epoch seconds",
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
class CandidateOut(BaseModel):
    step: str
    p_accept: float | None
    score: float


class SuppressedOut(BaseModel):
    """A step a guardrail held back, and the rule (cooldown, max_asks, user_cap, pause)."""

    step: str
    rule: str


class Decision(BaseModel):
    """One decision. ``step`` null means offer nothing; ``reason`` then says why."""

    decision_id: str
    user_id: str
    step: str | None
    stage: str | None
    effort: float | None
    p_accept: float | None
    propensity: float | None
    explored: bool
    policy: str
    arm: str
    model_version: str | None
    candidates: list[CandidateOut]
    reason: str | None
    suppressed: list[SuppressedOut] = Field(default_factory=list)
    explanation: dict[str, Any] | None = None


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

    id: int
    decision_id: str | None
    user_id: str
    step: str
    outcome: Outcome
    ts: str
    converted: bool


class HistoryItem(BaseModel):
    decision_id: str | None
    step: str
    outcome: Outcome
    ts: str


class UserView(BaseModel):
    """What the service knows about one user, and readiness for each eligible step."""

    user_id: str
    arm: str
    history: list[HistoryItem]
    next_cursor: str | None = Field(
        default=None, description="Pass as ``cursor`` for the next page; null on the last."
    )
    accepted: list[str]
    stage: str | None
    converted: bool
    eligible: dict[str, float | None]
    model_version: str | None


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

    status: Literal["ready", "unavailable"]
    store: str
    model: str | None
    policy: str
    arms: list[ArmStatus]
    notes: list[str]
    reason: str | None = None


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
