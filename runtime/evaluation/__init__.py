"""Evaluation: what a defended model costs (validate), how fast it runs (profile), reports for people and machines,
and the plumbing the attacks and the fingerprint share (served: the served model and its queries; students)."""
