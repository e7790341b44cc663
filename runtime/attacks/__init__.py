"""Attacks: black-box distillation of served models (students, the attack harness, configuration sweeps)."""
