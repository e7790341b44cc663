"""asvp: ship image-restoration models protected against knowledge distillation (ASVP, arXiv 2510.08925).

Public API: see asvp.api (the CLI `asvp` is a thin shell over it).
"""
__version__ = "0.1.0"
