"""The learning loop on the service's store: the log it writes is read back, trained on, gated
and promoted.

``export`` (store -> event log), ``report`` and ``watch_report`` (how each arm is doing),
``promote`` (the evidence-based promotion), ``learner`` with ``learn_gate`` and ``lease`` (the
long-running learner, one per store). Above the service (it reads its store) and above training
and simulation (it trains and compares).
"""
