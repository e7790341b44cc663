"""Evaluation: what a defended model costs (validate), how fast it runs (profile), and reports for people and machines."""
