"""The fingerprint's user-facing defaults, in a module that imports nothing heavy (the CLI reads them for its
--help without loading torch or ONNX Runtime)."""

DEFAULT_MAX_DROP_DB = 0.05  # the teacher's budget: held-out PSNR it may lose to the mark
# Reference students of the clean teacher (calibrate, the demo's quick check): their seeds and their budget, the
# quick attack preset's (queries x steps). Bias students drawn at mark time use other seeds (keyspace.BIAS_SEED0).
REFERENCE_SEEDS = (100, 101, 102)
REFERENCE_STEPS = 300
REFERENCE_POOL = 96
