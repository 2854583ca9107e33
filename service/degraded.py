"""Say loudly when the service runs without the model it was asked to use.

Without a model a model-based policy serves the ``ladder`` baseline (docs/design.md section 9). That
keeps the product working, but it is rarely what the operator wanted: most often the model was
trained under another ``NEXTSTEP_HOME`` (the default is relative to the working directory). So
``/readyz`` reports ``degraded`` with the reason, and start-up logs a WARNING saying where the
service looked. ``degraded`` keeps HTTP 200: every request is still answered correctly, and a
load balancer that took the only instances out of rotation would turn a weaker answer into none.
"""

from __future__ import annotations

import logging
import re

from service.runtime import Deciders
from service.settings import Settings

log = logging.getLogger("nextstep.service")
_USERINFO = re.compile(r"://[^/@\s]*@")


def degraded_reason(deciders: Deciders) -> str | None:
    """Why a served arm runs a fallback instead of its configured policy, or None.

    An arm configured with a model-free baseline (``ladder``, ``big_ask``, ``random``) is not
    degraded by having no model; shadow arms are never served, so they do not count.
    """
    reasons = []
    for name, a in deciders.arms.items():
        if a.arm.shadow_of is not None or a.decider.policy_name == a.arm.policy.name:
            continue
        why = a.note or "no model loaded"
        reasons.append(
            f"arm {name}: policy {a.arm.policy.name} has no model, serving "
            f"{a.decider.policy_name} ({why})"
        )
    return "; ".join(reasons) or None


def log_start(deciders: Deciders, settings: Settings) -> None:
    """The absolute ``NEXTSTEP_HOME`` (INFO) and, when degraded, where the models were looked
    for (WARNING)."""
    home = settings.home.resolve()
    log.info("NEXTSTEP_HOME=%s", home)
    reason = degraded_reason(deciders)
    if reason is None:
        return
    log.warning(
        "serving without a model: %s. Looked for %s in the registry %s and in the cache %s "
        "(NEXTSTEP_HOME=%s); train and promote one with the same NEXTSTEP_HOME "
        "(nextstep train --promote), then POST /admin/reload or restart.",
        reason,
        settings.model_uri,
        _USERINFO.sub("://***@", settings.tracking_uri),
        home / "model-cache",
        home,
    )
