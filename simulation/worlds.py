"""Built-in simulator worlds and the world file format.

Each world is a catalog plus a population of hidden user types. They are built to differ in
what matters, so that a policy tuned to one fails visibly in another:

* ``ladder``   – mostly hesitant users who punish big asks: lowest-effort-first is the best
                 fixed policy, but the eager minority leaves during a long ladder.
* ``eager``    – mostly ready, impatient users: asking for the goal at once is the best fixed
                 policy, yet the hesitant minority needs warming up.
* ``two_goals`` – two goals (a cheap monthly plan and an annual plan that needs an account and
                 a trial), prerequisites, and three types with different best paths.
* ``ladder_shift`` – ``ladder`` whose purchase becomes far more acceptable halfway through
                 (every type +2 logit on ``purchase``, say a price cut): the best paths shorten
                 (browsers buy at once, hesitant users skip the trial, ``big_ask`` now beats
                 ``ladder``) and a model trained before the shift under-predicts the purchase.
* ``ladder_mixshift`` – ``ladder`` whose type mix flips halfway through (the eager minority
                 becomes the majority): every step's readiness and the best first ask change.

A world file (YAML) has the same shape as the dictionaries below. Optional keys: a type's
``appeal`` (step id -> logit added to that type's P(accept) of the step, beside the catalog's
per-step ``appeal`` for every type) and the world's ``shift`` (``simulation.world_shift``): at a
fraction of the users in arrival order, named steps' readiness moves and/or the type weights
change. Users of a world with a shift arrive evenly spread over the simulated period in order,
so "halfway" is the same in arrival order and in event time. ``NAME:before_shift`` and
``NAME:after_shift`` name the stationary worlds before and after the shift of world ``NAME``
(``nextstep simulate --world ladder_shift:after_shift`` logs users who all meet the shifted one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from features.catalog import Catalog
from features.errors import InputError
from features.keys import first_unknown, unknown_key_message, yaml_error_line
from simulation.world_family import random_world_data
from simulation.world_shift import Shift, parse_shift

CHANNELS = ("email", "search", "social", "referral")
RANDOM_PREFIX = "random:"
DEVICES = ("mobile", "desktop")


@dataclass(frozen=True)
class UserType:
    """Hidden behaviour of one kind of user. Logit terms add up to P(accept)."""

    name: str
    weight: float
    base: float  # base logit of accepting
    resistance: float  # logit lost per unit of effort above the largest effort given so far
    momentum: float  # logit gained per consecutive accept (up to 3)
    decline_penalty: float  # logit lost per consecutive decline (up to 3)
    value_coef: float  # logit gained per unit of value received
    drop: float  # logit of leaving after a decline ("dropped")
    leave: float  # probability of leaving after an accept (natural attrition)
    gap_hours: float  # mean hours between visits (how fast the user comes back)
    channel: Mapping[str, float]
    device: Mapping[str, float]
    fatigue: float = 0.0  # logit lost per offer already made (asking too often wears users out)
    appeal: Mapping[str, float] = field(default_factory=dict)  # step id -> logit, this type only


@dataclass(frozen=True)
class World:
    """A catalog, a population of types and the rules every type shares."""

    name: str
    catalog: Catalog
    types: tuple[UserType, ...]
    max_asks: int = 8
    drop_gap: float = 0.15  # drop logit per unit of effort gap of the declined ask
    drop_declines: float = 0.4  # drop logit per earlier consecutive decline
    logging_uniform: float = 0.7  # logging policy: uniform with this prob, else its base rule
    logging_base: str = "ladder"  # the incumbent's rule: ladder, big_ask or random
    description: str = ""
    shift: Shift | None = None  # the users change at a fraction of the run (None: never)

    @property
    def weights(self) -> list[float]:
        total = sum(t.weight for t in self.types)
        return [t.weight / total for t in self.types]

    def before_shift(self) -> World:
        """The world its first users meet: the same world without its shift."""
        if self.shift is None:
            return self
        return replace(self, name=f"{self.name}:before_shift", shift=None)

    def after_shift(self) -> World:
        """The stationary world users meet after the shift (the world itself when none): the
        exact solver's optimum of it is what a recovered loop should approach."""
        s = self.shift
        if s is None:
            return self
        types = []
        for t in self.types:
            appeal = dict(t.appeal)
            if s.hits(t.name):
                for step, delta in s.readiness.items():
                    appeal[step] = appeal.get(step, 0.0) + delta
            weight = t.weight if s.weights is None else s.weights[t.name]
            types.append(replace(t, appeal=appeal, weight=weight))
        return replace(self, name=f"{self.name}:after_shift", types=tuple(types), shift=None)


def _t(name: str, weight: float, **kw: Any) -> dict[str, Any]:
    return {"name": name, "weight": weight, **kw}


BUILTIN: dict[str, dict[str, Any]] = {
    "ladder": {
        "description": "Hesitant majority: small steps first; an eager minority leaves early.",
        "max_asks": 8,
        "catalog": [
            {
                "id": "read_intro",
                "stage": "start",
                "effort": 1,
                "value": 1,
                "title": "Read the intro",
            },
            {
                "id": "watch_clip",
                "stage": "deliver",
                "effort": 2,
                "value": 2,
                "title": "Watch a clip",
            },
            {
                "id": "take_quiz",
                "stage": "guide",
                "effort": 3,
                "value": 1,
                "title": "Take the quiz",
            },
            {
                "id": "create_account",
                "stage": "build",
                "effort": 5,
                "value": 1,
                "title": "Create an account",
            },
            {
                "id": "start_trial",
                "stage": "build",
                "effort": 7,
                "value": 2,
                "title": "Start a trial",
            },
            {"id": "purchase", "stage": "convert", "effort": 10, "title": "Buy"},
        ],
        "types": [
            _t(
                "hesitant",
                0.55,
                base=1.6,
                resistance=0.55,
                momentum=0.35,
                decline_penalty=0.6,
                value_coef=0.15,
                drop=-1.0,
                leave=0.03,
                gap_hours=60.0,
                channel={"email": 0.88, "search": 0.04, "social": 0.04, "referral": 0.04},
                device={"mobile": 0.3, "desktop": 0.7},
            ),
            _t(
                "eager",
                0.25,
                base=1.2,
                resistance=0.12,
                momentum=0.2,
                decline_penalty=0.3,
                value_coef=0.05,
                drop=-0.4,
                leave=0.35,
                gap_hours=4.0,
                channel={"email": 0.04, "search": 0.88, "social": 0.04, "referral": 0.04},
                device={"mobile": 0.5, "desktop": 0.5},
            ),
            _t(
                "browser",
                0.20,
                base=0.8,
                resistance=0.3,
                momentum=0.3,
                decline_penalty=0.5,
                value_coef=0.2,
                drop=-0.8,
                leave=0.12,
                gap_hours=20.0,
                channel={"email": 0.04, "search": 0.04, "social": 0.88, "referral": 0.04},
                device={"mobile": 0.8, "desktop": 0.2},
            ),
        ],
    },
    "eager": {
        "description": "Ready, impatient majority: ask for the goal early; a hesitant minority.",
        "max_asks": 6,
        "catalog": [
            {"id": "open_tip", "stage": "start", "effort": 1, "value": 1},
            {"id": "free_template", "stage": "deliver", "effort": 2, "value": 3},
            {"id": "pick_goal", "stage": "guide", "effort": 3, "value": 1},
            {"id": "invite_teammate", "stage": "build", "effort": 5, "value": 1},
            {"id": "subscribe", "stage": "convert", "effort": 8},
        ],
        "types": [
            _t(
                "ready",
                0.6,
                base=1.3,
                resistance=0.08,
                momentum=0.15,
                decline_penalty=0.3,
                value_coef=0.05,
                drop=-0.6,
                leave=0.4,
                gap_hours=3.0,
                channel={"email": 0.04, "search": 0.88, "social": 0.04, "referral": 0.04},
                device={"mobile": 0.4, "desktop": 0.6},
            ),
            _t(
                "hesitant",
                0.25,
                base=1.5,
                resistance=0.5,
                momentum=0.35,
                decline_penalty=0.6,
                value_coef=0.2,
                drop=-1.2,
                leave=0.04,
                gap_hours=50.0,
                channel={"email": 0.88, "search": 0.04, "social": 0.04, "referral": 0.04},
                device={"mobile": 0.3, "desktop": 0.7},
            ),
            _t(
                "curious",
                0.15,
                base=0.6,
                resistance=0.25,
                momentum=0.3,
                decline_penalty=0.4,
                value_coef=0.25,
                drop=-0.6,
                leave=0.15,
                gap_hours=15.0,
                channel={"email": 0.04, "search": 0.04, "social": 0.88, "referral": 0.04},
                device={"mobile": 0.8, "desktop": 0.2},
            ),
        ],
    },
    "two_goals": {
        "description": "Two goals and prerequisites: a cheap monthly plan or an annual plan.",
        "max_asks": 8,
        "catalog": [
            {"id": "read_intro", "stage": "start", "effort": 1, "value": 1},
            {"id": "watch_demo", "stage": "deliver", "effort": 2, "value": 2},
            {"id": "pick_plan", "stage": "guide", "effort": 3, "value": 1},
            {"id": "create_account", "stage": "build", "effort": 4, "value": 1},
            {
                "id": "start_trial",
                "stage": "build",
                "effort": 6,
                "value": 3,
                "requires": ["create_account"],
            },
            {"id": "buy_monthly", "stage": "convert", "effort": 7, "requires": ["create_account"]},
            {"id": "buy_annual", "stage": "convert", "effort": 9, "requires": ["start_trial"]},
        ],
        "types": [
            _t(
                "planner",
                0.4,
                base=1.4,
                resistance=0.45,
                momentum=0.35,
                decline_penalty=0.6,
                value_coef=0.15,
                drop=-1.0,
                leave=0.04,
                gap_hours=48.0,
                channel={"email": 0.88, "search": 0.04, "social": 0.04, "referral": 0.04},
                device={"mobile": 0.3, "desktop": 0.7},
            ),
            _t(
                "impulsive",
                0.35,
                base=1.4,
                resistance=0.1,
                momentum=0.15,
                decline_penalty=0.3,
                value_coef=0.05,
                drop=-0.5,
                leave=0.3,
                gap_hours=3.0,
                channel={"email": 0.04, "search": 0.04, "social": 0.04, "referral": 0.88},
                device={"mobile": 0.7, "desktop": 0.3},
            ),
            _t(
                "skeptic",
                0.25,
                base=0.7,
                resistance=0.3,
                momentum=0.3,
                decline_penalty=0.5,
                value_coef=0.3,
                drop=-0.7,
                leave=0.1,
                gap_hours=18.0,
                channel={"email": 0.04, "search": 0.88, "social": 0.04, "referral": 0.04},
                device={"mobile": 0.5, "desktop": 0.5},
            ),
        ],
    },
}


#: ``ladder`` with its purchase made far more acceptable halfway through (a price cut, say): the
#: planner's best paths change and a stale model is clearly miscalibrated on ``purchase``, the
#: step it offers most (so the watch sees it quickly, before and after a retrained model).
BUILTIN["ladder_shift"] = {
    **BUILTIN["ladder"],
    "description": "ladder, but halfway through buying becomes far more acceptable.",
    "shift": {"at": 0.5, "readiness": {"purchase": 2.0}},
}
#: ``ladder`` whose type mix flips halfway through: the eager minority becomes the majority.
BUILTIN["ladder_mixshift"] = {
    **BUILTIN["ladder"],
    "description": "ladder, but halfway through eager users become the majority.",
    "shift": {"at": 0.5, "weights": {"hesitant": 0.15, "eager": 0.7, "browser": 0.15}},
}

#: The built-in worlds whose users never change (benchmarks and exact-value checks use these).
STATIONARY: tuple[str, ...] = tuple(name for name, data in BUILTIN.items() if "shift" not in data)


def world_from_dict(data: Mapping[str, Any], *, name: str, source: str = "world") -> World:
    """Build and validate a world from its dictionary/YAML form."""
    _reject_unknown_keys(data, source)
    try:
        catalog = Catalog.from_data(data["catalog"], source=source)
        types = tuple(
            UserType(
                name=str(t["name"]),
                weight=float(t["weight"]),
                base=float(t["base"]),
                resistance=float(t["resistance"]),
                momentum=float(t["momentum"]),
                decline_penalty=float(t["decline_penalty"]),
                value_coef=float(t["value_coef"]),
                drop=float(t["drop"]),
                leave=float(t["leave"]),
                gap_hours=float(t["gap_hours"]),
                channel=_dist(t["channel"], CHANNELS, "channel", source),
                device=_dist(t["device"], DEVICES, "device", source),
                fatigue=float(t.get("fatigue", 0.0)),
                appeal=_appeal(t.get("appeal", {}), catalog.ids, str(t["name"]), source),
            )
            for t in data["types"]
        )
    except InputError:
        raise
    except KeyError as exc:
        raise InputError(f"missing key {exc.args[0]!r}", source=source) from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad value ({exc})", source=source) from None
    if not types:
        raise InputError("a world needs at least one user type", source=source)
    for t in types:
        if t.weight <= 0 or not 0 <= t.leave < 1 or t.gap_hours <= 0:
            raise InputError(
                "weight and gap_hours must be > 0 and leave in [0, 1)", source=source, field=t.name
            )
    shift = None
    if data.get("shift") is not None:
        shift = parse_shift(
            data["shift"], steps=catalog.ids, type_names=[t.name for t in types], source=source
        )
    return World(
        name=name,
        catalog=catalog,
        types=types,
        max_asks=int(data.get("max_asks", 8)),
        drop_gap=float(data.get("drop_gap", 0.15)),
        drop_declines=float(data.get("drop_declines", 0.4)),
        logging_uniform=float(data.get("logging_uniform", 0.7)),
        logging_base=_logging_base(data.get("logging_base", "ladder"), source),
        description=str(data.get("description", "")),
        shift=shift,
    )


def _appeal(raw: Any, steps: Sequence[str], type_name: str, source: str) -> dict[str, float]:
    """A type's per-step logit; a step the catalog lacks would silently do nothing: refuse it."""
    if not isinstance(raw, Mapping):
        raise InputError(f"type {type_name!r}: appeal must map step ids to numbers", source=source)
    for step in raw:
        if step not in steps:
            hint = unknown_key_message(str(step), steps).replace("unknown key", "unknown step")
            raise InputError(f"type {type_name!r}: appeal: {hint}", source=source, field=step)
    return {str(k): float(v) for k, v in raw.items()}


#: The keys a world file may use: the World and UserType fields (a world's name is its file name).
_WORLD_KEYS = frozenset(f.name for f in fields(World)) - {"name"}
_TYPE_KEYS = frozenset(f.name for f in fields(UserType))


def _reject_unknown_keys(data: Mapping[str, Any], source: str) -> None:
    """A misspelt world or type key would silently fall back to a default (``max_ask``) or
    surface as a bare ``missing key``: refuse it, with the key it was probably meant to be."""
    unknown = first_unknown(data, _WORLD_KEYS)
    if unknown is not None:
        raise InputError(unknown_key_message(unknown, _WORLD_KEYS), source=source, field=unknown)
    raw_types = data.get("types")
    for pos, t in enumerate(raw_types if isinstance(raw_types, list) else [], start=1):
        unknown = first_unknown(t, _TYPE_KEYS) if isinstance(t, Mapping) else None
        if unknown is not None:
            label = t.get("name", f"#{pos}")
            raise InputError(
                f"type {label!r}: {unknown_key_message(unknown, _TYPE_KEYS)}",
                source=source,
                field=unknown,
            )


LOGGING_BASES = ("ladder", "big_ask", "random")


def _logging_base(raw: Any, source: str) -> str:
    if raw not in LOGGING_BASES:
        raise InputError(
            f"logging_base must be one of {', '.join(LOGGING_BASES)}, got {raw!r}", source=source
        )
    return str(raw)


def _dist(raw: Mapping[str, float], keys: tuple[str, ...], what: str, source: str) -> dict:
    total = float(sum(raw.values()))
    if total <= 0 or any(v < 0 for v in raw.values()):
        raise InputError(f"{what} probabilities must be >= 0 and not all 0", source=source)
    return {k: float(raw.get(k, 0.0)) / total for k in (*keys, *(k for k in raw if k not in keys))}


PHASES = (":before_shift", ":after_shift")


def load_world(name_or_path: str) -> World:
    """A built-in world by name, ``random:SEED`` (``simulation.world_family``), or a YAML file;
    with a ``:before_shift`` or ``:after_shift`` suffix, that stationary phase of the world."""
    for suffix in PHASES:
        if name_or_path.endswith(suffix) and not Path(name_or_path).exists():
            world = load_world(name_or_path[: -len(suffix)])
            if world.shift is None:
                raise InputError(
                    f"world {world.name} has no shift: drop {suffix}", source=name_or_path
                )
            return world.before_shift() if suffix == PHASES[0] else world.after_shift()
    if name_or_path in BUILTIN:
        return world_from_dict(BUILTIN[name_or_path], name=name_or_path)
    if name_or_path.startswith(RANDOM_PREFIX):
        raw = name_or_path[len(RANDOM_PREFIX) :]
        if not raw.isdigit():
            raise InputError(
                "a random world is random:SEED with SEED a non-negative integer",
                source=name_or_path,
            )
        return world_from_dict(random_world_data(int(raw)), name=name_or_path)
    p = Path(name_or_path)
    if not p.exists():
        raise InputError(
            f"unknown world (built-in: {', '.join(BUILTIN)}; random:SEED; or a YAML file path)",
            source=name_or_path,
        )
    import yaml

    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({yaml_error_line(exc)})", source=str(p)) from None
    except Exception as exc:
        raise InputError(f"not valid YAML ({exc})", source=str(p)) from None
    if not isinstance(data, Mapping):
        raise InputError("a world file is a mapping", source=str(p))
    return world_from_dict(data, name=p.stem, source=str(p))
