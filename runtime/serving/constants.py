"""The serving package's defaults, importable without onnx, numpy or tritonclient (the CLI's help texts)."""

FORMS = ("python", "onnxruntime", "tensorrt_plan")
DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 2000
LOOPBACK = "127.0.0.1"
PROTOCOLS = ("http", "grpc")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 2
DEFAULT_STARTUP_TIMEOUT_S = 180.0
DEFAULT_CHECK_SHAPES = ("1x3x32x32", "2x3x24x40")
