"""Simulation: worlds whose truth is known, the users simulated in them, and policies tried there.

``worlds`` (with ``world_family`` and ``world_shift``) defines a world; ``simulate`` generates its
event log and solves it exactly; ``synthetic`` fits models on such logs for tests and
benchmarks; ``traffic`` and ``rollout`` send simulated users to a policy, in process or over
HTTP; ``compare`` values policies on a log and, given a world, in the simulator. Above
``training``: a rollout serves a trained model, a comparison fingerprints its log as training
does.
"""
