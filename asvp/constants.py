"""Names and defaults that the command line shows, kept in a module that imports nothing.

The CLI takes its option defaults from here (`asvp --help` must not load torch, onnxruntime or onnx to print
them), and the deep module that owns each one (named beside it) imports it from here rather than defining its own.
"""
from __future__ import annotations

# exporter.export: the ONNX opsets it exports to (the lowest is the default; the highest is the TorchScript
# exporter's, torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET), and the exporters, the default first.
MIN_OPSET, MAX_OPSET = 17, 20
EXPORTERS = ("auto", "torchscript", "dynamo")

# asvp.tasks: the bundled tasks, in TASKS order (asvp.tasks checks that its specs match).
TASK_NAMES: tuple[str, ...] = ("sr", "lowlight", "underwater", "dehaze", "derain")

# runtime.engines.backends: the inference backends, the default first.
BACKENDS = ("onnxrt-cpu", "onnxrt-cuda", "onnxrt-trt", "tensorrt")

# runtime.engines.reduced (issue 26.3): what `validate` and `profile` compute in, the default first; fp16/bf16 run
# the ONNX model converted to torch in that dtype (the `precision` extra, onnx2torch).
PRECISIONS = ("fp32", "fp16", "bf16")

# graph_passes.defend: how ASVP is inserted, the default first.
DEFEND_MODES = ("subgraph", "plugin")

# runtime.evaluation.validate, runtime.attacks: the teacher drop the paper calls negligible, the default verdict
# threshold of validate and the sweep's constraint.
MAX_TEACHER_DROP_DB = 0.1
# runtime.evaluation.stats: a student drop below this does not count as protection, whatever its interval.
MIN_STUDENT_DROP_DB = 0.1
# runtime.evaluation.images: side (target pixels) of the held-out crops validation runs on.
HELDOUT_SIZE = 192

# runtime.evaluation.profile: the timed input, and the rounds of `asvp profile`.
PROFILE_SHAPE = (1, 3, 256, 256)
PROFILE_WARMUP, PROFILE_ITERS = 10, 50
MEMORY_MODES = ("subprocess", "inprocess", "off")  # peak memory: per model in a fresh process, in process, off
# runtime.evaluation.node_cost: rounds of `asvp node-cost` (each round times a group of defended models).
NODE_COST_WARMUP, NODE_COST_ITERS = 3, 20

# runtime.evaluation.absorbability: the attacker's query crops the diagnostic runs on.
ABSORBABILITY_QUERIES, ABSORBABILITY_CROP = 64, 64

# runtime.engines.shapes: the TensorRT optimisation profile when none is given (adapted to the model).
ENGINE_MIN_SHAPE = (1, 3, 32, 32)
ENGINE_OPT_SHAPE = (1, 3, 256, 256)
ENGINE_MAX_SHAPE = (4, 3, 512, 512)

# runtime.engines.build (issue 26.2, 26.5): where the ASVP/mark layers run under --fp16/--bf16/--int8 ("fp32":
# pinned by layer-precision constraints, the default), the hardware-compatibility levels `build` offers, and
# TensorRT's builder optimisation levels (None: TensorRT's default, 3).
ASVP_PRECISIONS = ("fp32", "reduced")
HARDWARE_COMPATIBILITY = ("none", "ampere+")
ENGINE_OPT_LEVELS = (0, 1, 2, 3, 4, 5)

# runtime.attacks: the attack presets, the default first.
DEFAULT_PRESET = "quick"

# asvp.fingerprint: the mark's principal directions, the test's significance level, the key's variable.
FINGERPRINT_M = 8  # D = m(m+1)/2 = 36 key dimensions
FINGERPRINT_ALPHA = 0.01
FINGERPRINT_KEY_ENV = "ASVP_FINGERPRINT_KEY"
# the fingerprint's marking and calibration (runtime.fingerprint): the teacher's PSNR budget for the mark,
# and the reference students of the clean teacher whose bias verification removes (seeds, steps, queries).
FINGERPRINT_MAX_DROP_DB = 0.05
REFERENCE_SEEDS = (100, 101, 102)
REFERENCE_STEPS, REFERENCE_POOL = 300, 96

# exporter.teachers.train: how a bundled teacher is trained.
TEACHER_TRAIN = {"steps": 1200, "batch": 12, "patch": 64, "lr": 2e-3, "seed": 0}
