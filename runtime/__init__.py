"""asvp.runtime: build, run and validate defended models (ONNX Runtime, TensorRT through Polygraphy)."""
from polygraphy.logger import G_LOGGER

# Polygraphy logs every session creation at INFO; asvp reports what matters itself.
G_LOGGER.module_severity = G_LOGGER.WARNING
