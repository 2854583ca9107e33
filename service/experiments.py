"""Online experiments: arms, weights and sticky assignment (docs/design.md section 8).

An experiment is a value read from YAML (``NEXTSTEP_EXPERIMENTS``) or, without a file, one arm
``champion`` running the settings' policy on the model URI. Assignment hashes a salt and the
user id with SHA-256 into [0, 1) and walks the cumulative weights, so a user keeps the same arm
across requests, workers and restarts, and changing the salt reshuffles everyone.

YAML shape::

    name: planner-vs-greedy        # optional
    salt: 2025-03                   # optional, defaults to the name
    arms:
      - name: champion
        policy: planner             # or "planner+epsilon=0.05"
        exploration: {kind: epsilon, value: 0.05}
        model: champion             # alias, version number or full models:/ URI
        weight: 0.9
      - name: greedy
        policy: greedy
        model: challenger
        weight: 0.1
      - name: challenger-shadow     # decides on every request of `champion`, never served
        policy: planner
        model: challenger
        shadow_of: champion

A shadow arm gets no traffic of its own (its weight is ignored): on every request served by
the arm it shadows it also decides, and its choice and propensity are stored beside the served
decision, so ``nextstep report`` can show how often it agrees and estimate it off-policy.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.errors import InputError
from features.keys import first_unknown, unknown_key_message, yaml_error_line
from models.policies import EXPLORATION, PolicyConfig

_ARM_KEYS = frozenset({"name", "policy", "exploration", "model", "weight", "shadow_of"})
_EXPERIMENT_KEYS = frozenset({"name", "salt", "arms"})


class ExperimentError(InputError):
    """The experiments file is unreadable or describes an impossible split."""


@dataclass(frozen=True)
class Arm:
    """One arm: a policy (with optional exploration) on one model reference, with a weight."""

    name: str
    policy: PolicyConfig
    model: str | None = None  # None: the settings' model URI
    weight: float = 1.0
    shadow_of: str | None = None  # a shadow arm: decides beside this arm, is never served
    # no policy was configured: serve the policy the model's training run recommends, if any
    follow_model: bool = False

    @property
    def exploration(self) -> dict[str, Any] | None:
        if self.policy.exploration is None:
            return None
        return {"kind": self.policy.exploration, "value": self.policy.value}


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    arms: tuple[Arm, ...]

    def __post_init__(self) -> None:
        if not self.arms:
            raise ExperimentError("an experiment needs at least one arm", field="arms")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ExperimentError("arm names must be unique", field="arms")
        served = [a for a in self.arms if a.shadow_of is None]
        if not served:
            raise ExperimentError("an experiment needs at least one served arm", field="arms")
        served_names = {a.name for a in served}
        for a in self.arms:
            if a.shadow_of is not None and a.shadow_of not in served_names:
                raise ExperimentError(
                    f"arm {a.name!r} shadows {a.shadow_of!r}, which is not a served arm",
                    field="shadow_of",
                )
        total = sum(a.weight for a in served)
        if not total > 0:
            raise ExperimentError("the arm weights must sum to more than 0", field="weight")
        acc, cum = 0.0, []
        for a in served:
            acc += a.weight / total
            cum.append(acc)
        cum[-1] = 1.0
        object.__setattr__(self, "_cumulative", tuple(cum))
        object.__setattr__(self, "_served", tuple(served))

    def bucket(self, user_id: str) -> float:
        """The user's fixed position in [0, 1) for this salt."""
        digest = hashlib.sha256(f"{self.salt}\x1f{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    def assign(self, user_id: str) -> Arm:
        cum: tuple[float, ...] = self._cumulative  # type: ignore[attr-defined]
        served: tuple[Arm, ...] = self._served  # type: ignore[attr-defined]
        if len(served) == 1:  # no experiment running: no hash to compute
            return served[0]
        i = bisect.bisect_right(cum, self.bucket(user_id))
        return served[min(i, len(served) - 1)]

    def shadows_of(self, arm_name: str) -> tuple[Arm, ...]:
        return tuple(a for a in self.arms if a.shadow_of == arm_name)


CHAMPION = "champion"  # the arm the exploration budget applies to


def parse_exploration(text: str) -> tuple[str, float] | None:
    """``NEXTSTEP_EXPLORATION``: ``epsilon=0.05``, ``softmax=0.5`` or ``none`` (None)."""
    raw = text.strip().lower()
    if raw in ("none", "off", ""):
        return None
    kind, sep, val = raw.partition("=")
    kind = kind.strip()
    try:
        value = float(val) if sep else math.nan
    except ValueError:
        value = math.nan
    ok = (kind == "epsilon" and 0.0 <= value <= 1.0) or (kind == "softmax" and value > 0)
    if kind not in EXPLORATION or not ok:
        raise ValueError(
            f"exploration must be 'none', 'epsilon=E' (0 <= E <= 1) or 'softmax=T' (T > 0), "
            f"not {text!r}"
        )
    return kind, value


def with_exploration(arm: Arm, exploration: tuple[str, float] | None) -> Arm:
    """The champion arm with the default exploration budget when its policy names none."""
    if exploration is None or arm.name != CHAMPION or arm.shadow_of is not None:
        return arm
    if arm.policy.exploration is not None:  # its own exploration wins
        return arm
    kind, value = exploration
    p = arm.policy
    policy = PolicyConfig(name=p.name, exploration=kind, value=value, params=p.params)
    return dataclasses.replace(arm, policy=policy)


def default_experiment(
    policy: str, *, follow_model: bool = False, exploration: tuple[str, float] | None = None
) -> Experiment:
    arm = Arm(CHAMPION, PolicyConfig.parse(policy), follow_model=follow_model)
    return Experiment(name="default", salt="default", arms=(with_exploration(arm, exploration),))


def load_experiment(
    path: str | Path | None,
    *,
    default_policy: str,
    follow_model: bool = False,
    exploration: tuple[str, float] | None = None,
) -> Experiment:
    """The experiment in ``path``, or the single-arm default when there is no file (which
    serves the model's recommended policy when ``follow_model``, i.e. no policy was set).

    ``exploration`` (``NEXTSTEP_EXPLORATION``) is applied to the arm named ``champion`` when
    its policy names no exploration of its own; other arms run exactly as configured."""
    if path is None:
        return default_experiment(
            default_policy, follow_model=follow_model, exploration=exploration
        )
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"cannot read experiments file ({exc})", source=source) from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ExperimentError(f"not valid YAML ({yaml_error_line(exc)})", source=source) from None
    exp = parse_experiment(data, source=source, default_policy=default_policy)
    if exploration is None:
        return exp
    arms = tuple(with_exploration(a, exploration) for a in exp.arms)
    return Experiment(name=exp.name, salt=exp.salt, arms=arms)


def parse_experiment(data: Any, *, source: str, default_policy: str) -> Experiment:
    if isinstance(data, list):
        data = {"arms": data}
    if not isinstance(data, Mapping) or not isinstance(data.get("arms"), list):
        raise ExperimentError("expected a mapping with a list 'arms'", source=source)
    unknown = first_unknown(data, _EXPERIMENT_KEYS)
    if unknown is not None:  # e.g. ``salts``: a silently ignored salt reshuffles nobody
        raise ExperimentError(
            unknown_key_message(unknown, _EXPERIMENT_KEYS), source=source, field=unknown
        )
    name = str(data.get("name") or "experiment")
    salt = str(data.get("salt") or name)
    arms = tuple(
        _parse_arm(item, pos, source, default_policy)
        for pos, item in enumerate(data["arms"], start=1)
    )
    try:
        return Experiment(name=name, salt=salt, arms=arms)
    except ExperimentError as exc:
        raise ExperimentError(exc.message, source=source, field=exc.field) from None


def _parse_arm(item: Any, pos: int, source: str, default_policy: str) -> Arm:
    if not isinstance(item, Mapping):
        raise ExperimentError(f"arm #{pos} is not a mapping", source=source)
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ExperimentError(f"arm #{pos} needs a non-empty name", source=source, field="name")

    def bad(msg: str, fld: str) -> ExperimentError:
        return ExperimentError(f"arm {name!r}: {msg}", source=source, field=fld)

    unknown = first_unknown(item, _ARM_KEYS)
    if unknown is not None:  # e.g. ``shadow``: silently serving a shadow arm would be worse
        raise bad(unknown_key_message(unknown, _ARM_KEYS), unknown)

    try:
        policy = PolicyConfig.parse(str(item.get("policy") or default_policy))
    except ValueError as exc:
        raise bad(str(exc), "policy") from None
    expl = item.get("exploration")
    if expl is not None:
        if not isinstance(expl, Mapping) or expl.get("kind") not in EXPLORATION:
            raise bad("exploration must be {kind: epsilon|softmax, value: number}", "exploration")
        value = expl.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("exploration value must be a number", "exploration")
        kind, value = str(expl["kind"]), float(value)
        if (kind == "epsilon" and not 0.0 <= value <= 1.0) or (kind == "softmax" and not value > 0):
            raise bad("epsilon must be in [0, 1], a softmax temperature > 0", "exploration")
        policy = PolicyConfig(name=policy.name, exploration=kind, value=value, params=policy.params)
    weight = item.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise bad("weight must be a number", "weight")
    if weight < 0:
        raise bad("weight must be >= 0", "weight")
    model = item.get("model")
    if model is not None and not isinstance(model, str | int):
        raise bad("model must be an alias, a version or a models:/ URI", "model")
    shadow_of = item.get("shadow_of")
    if shadow_of is not None and (not isinstance(shadow_of, str) or not shadow_of.strip()):
        raise bad("shadow_of must name another arm", "shadow_of")
    return Arm(
        name=name.strip(),
        policy=policy,
        model=None if model is None else str(model),
        weight=float(weight),
        shadow_of=None if shadow_of is None else shadow_of.strip(),
    )
