"""asvp.runtime.engines: execution engines for the defended op (GPU kernels)."""
