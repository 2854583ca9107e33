"""Evaluation: how good a readiness model or a decision policy is, measured on a log.

``evaluate`` (log loss, AUC, calibration and their plots), ``ope`` (one-step off-policy
estimates), ``trajectory_ope`` and ``offpolicy`` (whole-trajectory estimates of a policy
replayed on a log), ``policy_choice`` (which candidate to serve), ``intervals`` (confidence
intervals) and ``explore`` (a log's descriptive tables). Imports only ``features`` and
``models``: training values its candidate policies with it.
"""
