"""The trainer: FSDP2 ranks (worker.py, plain Python), their Ray group (group.py), and
the pure planning of who computes which tokens with which loss weight (plan.py)."""
