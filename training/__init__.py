"""Training: fitting readiness models on an event log and the model registry.

``pipeline`` (one machine) and ``dask_train`` (a Dask cluster) fit, evaluate on a holdout
(``holdout``), value candidate policies (``policy_eval``) and register a version (``tracking``,
``pyfunc_model``, ``pyfunc_signature``); ``modelio`` loads a version back for batch work;
``predict`` and ``recommend`` score a log with it. ``truth`` and ``context_reference`` are the
column rules and the drift reference a run stores.
"""
