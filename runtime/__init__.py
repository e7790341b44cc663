"""asvp.runtime: build, run and validate defended models (ONNX Runtime, TensorRT through Polygraphy)."""


def quiet_polygraphy() -> None:
    """Polygraphy logs every session creation at INFO; asvp reports what matters itself. Called by the entry points
    (the CLI's main, the demo), not on import: importing asvp.runtime changes no logger and loads no Polygraphy."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING
