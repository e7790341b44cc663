"""asvp.runtime.engines.kernels: hand-written GPU kernels (Triton; optional: `pip install 'asvp[kernels]'`)."""
