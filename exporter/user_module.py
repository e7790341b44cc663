"""A user's model from `package.module:Class`: imported, constructed with JSON keyword arguments, and given a
state dict (.pt/.pth or .safetensors)."""
from __future__ import annotations

import importlib
import json
import os

import torch

from asvp.errors import AsvpError, first_line, weights_load_detail
from asvp.io import require_file


def load_user_module(target: str, weights: str | os.PathLike | None = None, kwargs: str | dict | None = None) -> torch.nn.Module:
    """Instantiate `package.module:Class(**kwargs)` and load a state dict (.pt/.pth or .safetensors)."""
    if ":" not in target:
        raise AsvpError(f"expected module:Class, got {target!r}")
    mod_name, cls_name = target.split(":", 1)
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise AsvpError(f"cannot import {target}: {exc}") from None
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as exc:
            raise AsvpError(f"--kwargs is not valid JSON: {exc}") from None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise AsvpError(f"--kwargs must be a JSON object of constructor arguments, got {type(kwargs).__name__}")
    try:
        model = cls(**(kwargs or {}))
    except Exception as exc:
        raise AsvpError(f"cannot construct {target}(**{json.dumps(kwargs or {})}): {type(exc).__name__}: "
                        f"{first_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise AsvpError(f"{target} is not a torch.nn.Module class (it made a {type(model).__name__})")
    if weights is not None:
        w = require_file(weights, "weights file")
        try:
            if w.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(w))
            else:
                state = torch.load(str(w), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            model.load_state_dict(state)
        except AsvpError:
            raise
        except Exception as exc:
            raise AsvpError(f"cannot load weights {w} into {target}: {weights_load_detail(exc)}") from None
    return model.eval()
