"""The serving runtime: one immutable snapshot of (experiment, one Decider per arm), swapped whole.

Why a snapshot: a reload (new champion, edited experiments file) builds every arm's Decider
first, smoke-tests each, and only then replaces one reference. A request reads that reference
once and keeps its snapshot to the end, so in-flight requests finish on the old model, new ones
start on the new, and a model that fails to load never replaces a working one.

Start-up may serve an arm's champion from the local cache without asking the registry (see
``ModelLoader.resolve(prefer_cache=True)``), so the service is ready in seconds even when the
registry is slow or down. Such arms are *unconfirmed*: ``confirm`` asks the registry once it can
and swaps, exactly like a reload, if the champion moved while the service was down.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from features.catalog import Catalog
from models.bundle import ModelLoadError
from models.decide import Decider
from models.policies import POLICIES, PolicyConfig
from models.resolver import ModelRef, parse_ref
from service.experiments import Arm, Experiment, load_experiment
from service.model_loader import ModelLoader, Resolution
from service.redact import redact
from service.settings import Settings

log = logging.getLogger("nextstep.service.runtime")

DeciderFactory = Callable[[Catalog, Arm], Decider]


@dataclass(frozen=True)
class ArmRuntime:
    arm: Arm
    decider: Decider
    model_source: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Deciders:
    """What serves requests right now; never mutated (a reload makes a new one)."""

    experiment: Experiment
    arms: Mapping[str, ArmRuntime]
    generation: int = 0
    loaded_at: float = field(default_factory=time.time)

    def for_user(self, user_id: str) -> ArmRuntime:
        return self.arms[self.experiment.assign(user_id).name]

    def shadows(self, arm_name: str) -> list[ArmRuntime]:
        """The shadow arms that decide beside ``arm_name`` (never served)."""
        return [self.arms[a.name] for a in self.experiment.shadows_of(arm_name)]

    @property
    def primary(self) -> ArmRuntime:
        """The first arm (the champion by convention): what /readyz summarises."""
        return self.arms[self.experiment.arms[0].name]

    def describe(self) -> list[dict[str, Any]]:
        """Each arm as ``/readyz`` and ``/admin/reload`` show it."""
        return [
            {
                "name": name,
                "policy": a.decider.policy_name,
                "model_version": a.decider.model_version,
                "model_source": a.model_source,
                "note": a.note,
            }
            for name, a in self.arms.items()
        ]

    def versions(self) -> dict[str, str | None]:
        return {name: a.decider.model_version for name, a in self.arms.items()}


class ModelDeciderFactory:
    """The default factory: each arm's model through ``ModelLoader`` (registry, cache, path)."""

    def __init__(self, settings: Settings, loader: ModelLoader) -> None:
        self.settings = settings
        self.loader = loader
        self.last: dict[str, Resolution] = {}

    def __call__(self, catalog: Catalog, arm: Arm) -> Decider:
        return self._build(catalog, arm, prefer_cache=False)

    def for_start(self, catalog: Catalog, arm: Arm) -> Decider:
        """Start-up: a cached champion may serve before the registry answers (unconfirmed)."""
        return self._build(catalog, arm, prefer_cache=True)

    def _ref(self, arm: Arm) -> ModelRef:
        return parse_ref(arm.model, self.settings.model_uri)

    def _build(self, catalog: Catalog, arm: Arm, *, prefer_cache: bool) -> Decider:
        res = self.loader.resolve(self._ref(arm), prefer_cache=prefer_cache)
        self.last[arm.name] = res
        model = res.model
        return Decider(
            catalog,
            served_policy(arm, None if model is None else model.meta),
            scorer=None if model is None else model.scorer,
            model_version=None if model is None else model.version,
            seed=self.settings.seed,
            guardrails=self.settings.guardrails,
        )

    def unconfirmed(self, arm: Arm) -> bool:
        """True when the arm's model came from the cache and the registry was not asked yet."""
        res = self.last.get(arm.name)
        return res is not None and res.unconfirmed

    def confirm(self, arm: Arm, served: str | None) -> bool:
        """Ask the registry for the arm's version: True (and the arm counts as resolved there)
        when it is ``served``; False when the champion moved. Raises when the registry cannot
        be asked."""
        ref = self._ref(arm)
        version = self.loader.registry_version(ref)
        if version != served:
            return False
        res = self.last.get(arm.name)
        if res is not None and res.model is not None and version is not None:
            self.loader.confirmed(ref, version)
            model = dataclasses.replace(res.model, source="registry")
            self.last[arm.name] = Resolution(model)
        return True

    def note_unreachable(self, arm: Arm, why: str) -> None:
        """Keep the arm unconfirmed, and say in /readyz why the registry did not answer."""
        res = self.last.get(arm.name)
        if res is not None and res.model is not None:
            note = f"{why}; serving cached version {res.model.version}; asking again later"
            self.last[arm.name] = dataclasses.replace(res, note=note)

    def describe(self, arm: Arm) -> tuple[str | None, str | None]:
        res = self.last.get(arm.name)
        if res is None:
            return None, None
        return (None if res.model is None else res.model.source), res.note

    def retain(self, arms: list[Arm]) -> None:
        """After a swap: keep loaded only the models these arms serve (``ModelLoader.retain``)."""
        names = {a.name for a in arms}
        self.last = {n: r for n, r in self.last.items() if n in names}
        used = {r.model.uri for r in self.last.values() if r.model is not None}
        dropped = self.loader.retain(used)
        if dropped:
            log.info("dropped %d loaded model(s) no arm serves", dropped)

    def probe(self, arm: Arm) -> str | None:
        return self.loader.current_version(parse_ref(arm.model, self.settings.model_uri))


def served_policy(arm: Arm, meta: Mapping[str, Any] | None) -> PolicyConfig:
    """The arm's policy; for an arm without a configured policy, the one the model's training
    run recommends (bundle meta ``recommended_policy``), keeping the arm's exploration."""
    rec = (meta or {}).get("recommended_policy") if arm.follow_model else None
    if not isinstance(rec, str) or rec not in POLICIES:
        return arm.policy
    p = arm.policy
    return PolicyConfig(name=rec, exploration=p.exploration, value=p.value)


class Runtime:
    """Owns the current ``Deciders`` and rebuilds it on start-up and reload."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        factory: DeciderFactory,
        *,
        on_swap: Callable[[Deciders], None] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.factory = factory
        self.on_swap = on_swap
        self._lock = threading.Lock()
        self._current: Deciders | None = None
        self._generation = 0
        self.last_error: str | None = None

    @property
    def current(self) -> Deciders:
        cur = self._current
        if cur is None:
            raise RuntimeError("the runtime has not been started")
        return cur

    def start(self) -> Deciders:
        """First build: an arm whose model is refused serves without a model (and says why)."""
        with self._lock:
            experiment = self._experiment()
            arms = {}
            for arm in experiment.arms:
                try:
                    arms[arm.name] = self._build_arm(arm, starting=True)
                except ModelLoadError as exc:
                    log.error("arm %s: %s; serving without a model", arm.name, exc)
                    decider = Decider(
                        self.catalog,
                        arm.policy,
                        seed=self.settings.seed,
                        guardrails=self.settings.guardrails,
                    )
                    arms[arm.name] = ArmRuntime(arm, decider, None, f"{exc}; serving ladder")
            return self._swap(Deciders(experiment, arms, self._next_generation()))

    def reload(self, *, only_if_changed: bool = False) -> tuple[bool, Deciders]:
        """Rebuild everything; raises ``ModelLoadError``/``ExperimentError`` and keeps the old."""
        with self._lock:
            experiment = self._experiment()
            if only_if_changed and not self._changed(experiment):
                return False, self.current
            arms = {arm.name: self._build_arm(arm) for arm in experiment.arms}
            return True, self._swap(Deciders(experiment, arms, self._next_generation()))

    def unconfirmed(self) -> list[str]:
        """Arms serving a cached model the registry has not confirmed yet (see ``confirm``)."""
        check: Any = getattr(self.factory, "unconfirmed", None)
        if check is None or self._current is None:
            return []
        return [a.name for a in self._current.experiment.arms if check(a)]

    def confirm(self) -> str:
        """Ask the registry about the arms start-up served from the cache.

        Returns ``"confirmed"`` (the registry agrees: same snapshot and generation, only the
        arms' source and note change), ``"swapped"`` (a champion moved while the service was
        down: every arm rebuilt and swapped in, as a reload does), ``"unreachable"`` (the
        registry did not answer: keep serving, ask again later) or ``"nothing"``. Raises
        ``ModelLoadError`` when the registry's champion cannot be used (the cached one keeps
        serving)."""
        with self._lock:
            pending = self.unconfirmed()
            if not pending:
                return "nothing"
            cur = self.current
            by_name = {a.name: a for a in cur.experiment.arms}
            factory: Any = self.factory
            moved = False
            try:
                for name in pending:
                    served = cur.arms[name].decider.model_version
                    if not factory.confirm(by_name[name], served):
                        moved = True
            except Exception as exc:  # unreachable server, locked database, network
                why = f"registry unreachable ({type(exc).__name__})"  # published on /readyz
                log.warning("confirming the cached models: %s: %s", why, redact(str(exc)[:300]))
                for name in pending:
                    factory.note_unreachable(by_name[name], why)
                self._current = self._annotated(cur, pending)
                return "unreachable"
            if moved:
                arms = {arm.name: self._build_arm(arm) for arm in cur.experiment.arms}
                self._swap(Deciders(cur.experiment, arms, self._next_generation()))
                return "swapped"
            self._current = self._annotated(cur, pending)
            log.info("the registry confirms the cached models of %s", ", ".join(pending))
            return "confirmed"

    # -- internals ---------------------------------------------------------------------------
    def _annotated(self, cur: Deciders, names: list[str]) -> Deciders:
        """``cur`` with the named arms' source and note refreshed from the factory: the same
        deciders and generation (nothing was rebuilt, so metrics and callers see no swap)."""
        describe: Any = self.factory.describe  # type: ignore[attr-defined]
        arms = dict(cur.arms)
        for name in names:
            source, note = describe(arms[name].arm)
            arms[name] = dataclasses.replace(arms[name], model_source=source, note=note)
        return dataclasses.replace(cur, arms=arms)

    def _experiment(self) -> Experiment:
        return load_experiment(
            self.settings.experiments,
            default_policy=self.settings.policy,
            follow_model="policy" not in self.settings.model_fields_set,
            exploration=self.settings.default_exploration,
        )

    def _build_arm(self, arm: Arm, *, starting: bool = False) -> ArmRuntime:
        build: Any = getattr(self.factory, "for_start", None) if starting else None
        decider = (build or self.factory)(self.catalog, arm)
        if self.settings.guardrails is not None and decider.guardrails is None:
            decider.set_guardrails(self.settings.guardrails)  # custom factories get them too
        try:  # a smoke decision proves policy and model work together on this catalog
            decider.decide("\x1fsmoke", [], now=time.time())
        except Exception as exc:
            raise ModelLoadError(
                f"arm {arm.name!r}: smoke decision failed ({type(exc).__name__}: {exc})"
            ) from None
        describe: Any = getattr(self.factory, "describe", None)
        source, note = describe(arm) if describe else ("custom", None)
        if decider.model_version is None and source == "custom":
            source = None
        return ArmRuntime(arm, decider, source, note)

    def _changed(self, experiment: Experiment) -> bool:
        cur = self.current
        if experiment != cur.experiment:
            return True
        probe: Any = getattr(self.factory, "probe", None)
        if probe is None:
            return True
        for arm in experiment.arms:
            version = probe(arm)
            if version is not None and version != cur.arms[arm.name].decider.model_version:
                return True
        return False

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _swap(self, deciders: Deciders) -> Deciders:
        self._current = deciders
        self.last_error = None
        retain: Any = getattr(self.factory, "retain", None)
        if retain is not None:  # models no arm serves any more are dropped
            retain(list(deciders.experiment.arms))
        if self.on_swap is not None:
            self.on_swap(deciders)
        log.info(
            "serving generation %d: %s",
            deciders.generation,
            ", ".join(
                f"{n}={a.decider.policy_name}@{a.decider.model_version}"
                for n, a in deciders.arms.items()
            ),
        )
        return deciders
