"""Defended-node bookkeeping for validation: what a defended model says about itself, clean features at those
nodes, and their singular-value spectra before and after ASVP.

Clean features come from the *clean* model with the node tensors added to graph.outputs (onnx-graphsurgeon),
run on the same backend as the models under test. "After" is `asvp_reference` (float64 SVD) applied to that
clean feature with the defended model's recorded configuration: what the defence does at that node in
isolation. (With several inline nodes, a later node sees upstream-perturbed features in the defended model;
the spectrum shows each node on clean input.) For tap placement the defended model's own perturbed feature
(its extra output) is shown too.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asvp.config import AsvpConfig
from asvp.errors import AsvpError

TAP_KEYS = ("tap", "tap_output", "tap_output_name", "output_name", "tap_name")


@dataclass
class DefendedNode:
    node: str
    tensor: str
    channels: int | None = None
    tap_output: str | None = None

    def to_dict(self) -> dict:
        return {"node": self.node, "tensor": self.tensor, "channels": self.channels, "tap_output": self.tap_output}


@dataclass
class DefenceInfo:
    """What a defended model's metadata_props say (all fields optional: stand-ins may carry none)."""

    defended: bool = False
    mode: str | None = None
    placement: str = "inline"
    nodes: list = field(default_factory=list)  # [DefendedNode]
    config: AsvpConfig | None = None
    config_digest: str | None = None

    def to_dict(self) -> dict:
        return {"defended": self.defended, "mode": self.mode, "placement": self.placement,
                "nodes": [n.to_dict() for n in self.nodes],
                "config": self.config.to_dict() if self.config else None, "config_digest": self.config_digest}


def defence_info(meta: dict[str, str]) -> DefenceInfo:
    """Parse asvp.defended / asvp.mode / asvp.placement / asvp.nodes / asvp.config from metadata_props."""
    info = DefenceInfo(defended=meta.get("asvp.defended", "").lower() in ("1", "true", "yes"),
                       mode=meta.get("asvp.mode"), config_digest=meta.get("asvp.config_digest"))
    if "asvp.config" in meta:
        try:
            info.config = AsvpConfig.from_dict(json.loads(meta["asvp.config"]))
        except (json.JSONDecodeError, TypeError) as exc:
            raise AsvpError(f"defended model's asvp.config metadata is not valid: {exc}") from None
    info.placement = meta.get("asvp.placement") or (info.config.placement if info.config else "inline")
    if "asvp.nodes" in meta:
        try:
            raw = json.loads(meta["asvp.nodes"])
        except json.JSONDecodeError as exc:
            raise AsvpError(f"defended model's asvp.nodes metadata is not valid JSON: {exc}") from None
        for i, n in enumerate(raw if isinstance(raw, list) else []):
            if isinstance(n, str):
                n = {"tensor": n}
            if not isinstance(n, dict) or not (n.get("tensor") or n.get("output")):
                raise AsvpError(f"defended model's asvp.nodes entry {i} names no tensor: {n!r}")
            tensor = n.get("tensor") or n.get("output")
            tap = next((n[k] for k in TAP_KEYS if n.get(k)), None)
            ch = n.get("channels")
            info.nodes.append(DefendedNode(str(n.get("node", tensor)), str(tensor),
                                           int(ch) if ch is not None else None, tap))
    return info


# ---- exposing internal tensors --------------------------------------------------------------------------

def expose_tensors(model, names: list[str]):
    """A copy of the ONNX model with the named internal tensors added to graph.outputs (onnx-graphsurgeon).

    Missing names raise AsvpError. The IR version, opset and metadata are kept.
    """
    import onnx
    import onnx_graphsurgeon as gs

    try:  # types and shapes of internal tensors (graph outputs must carry both)
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:
        typed = model
    graph = gs.import_onnx(typed)
    tensors = graph.tensors()
    missing = [n for n in names if n not in tensors]
    if missing:
        raise AsvpError(f"tensor(s) {missing} not found in the model")
    present = {o.name for o in graph.outputs}
    for n in names:
        if n in present:
            continue
        t = tensors[n]
        if t.dtype is None:
            t.dtype = np.float32
        if t.shape is None:  # ASVP features are NCHW
            t.shape = [f"{n}_{d}" for d in "nchw"]
        graph.outputs.append(t)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(out)
    return out


class FeatureRunner:
    """Runs the clean model with some internal tensors exposed, on a given backend (context manager)."""

    def __init__(self, model, names: list[str], backend: str, input_shape=None):
        import onnx

        from asvp.runtime import backends

        self.names = list(names)
        exposed = expose_tensors(model, self.names)
        # A file, not bytes: the tensorrt backend parses ONNX from a path.
        self._tmp = tempfile.TemporaryDirectory(prefix="asvp-features-")
        path = Path(self._tmp.name) / "clean_exposed.onnx"
        onnx.save(exposed, str(path))
        try:
            self.runner = backends.make_runner(path, backend, input_shape=input_shape, name="clean+features")
        except BaseException:
            self._tmp.cleanup()
            raise

    def __enter__(self):
        try:
            self.runner.activate()
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self.runner.deactivate()
        finally:
            self._tmp.cleanup()

    def features(self, feed: dict) -> dict[str, np.ndarray]:
        out = self.runner.infer(feed)
        return {n: np.array(out[n], dtype=np.float32) for n in self.names}


# ---- spectra --------------------------------------------------------------------------------------------

def singular_values(feat: np.ndarray) -> np.ndarray:
    """Singular values (descending, float64) of the first sample of an NCHW feature, as ASVP sees it (C x HW)."""
    import torch

    f = np.asarray(feat, dtype=np.float64)
    if f.ndim != 4:
        raise AsvpError(f"expected an NCHW feature, got shape {f.shape}")
    m = torch.from_numpy(f[0].reshape(f.shape[1], -1))
    return torch.linalg.svdvals(m).numpy()


def reference_perturb(feat: np.ndarray, cfg: AsvpConfig) -> np.ndarray:
    import torch

    from asvp.method import asvp_reference

    return asvp_reference(torch.from_numpy(np.asarray(feat, dtype=np.float64)), cfg).numpy()


def amplified_count(s_before: np.ndarray, cfg: AsvpConfig) -> int:
    """k actually used for this sample (adaptive rule on s^2, capped at cfg.k)."""
    import torch

    from asvp.method import adaptive_k_mask

    e = torch.from_numpy(np.asarray(s_before, dtype=np.float64) ** 2)[None]
    k = min(cfg.k, e.shape[1])
    return int(adaptive_k_mask(e, cfg.tau, k, cfg.k_mode == "adaptive").sum())


def rel_change(after: np.ndarray, before: np.ndarray) -> float:
    """||after - before|| / ||before|| (Frobenius, float64)."""
    a, b = np.asarray(after, np.float64), np.asarray(before, np.float64)
    nb = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / nb if nb > 0 else (0.0 if not np.any(a) else math.inf)


def spectrum_entry(node: DefendedNode, feat: np.ndarray, cfg: AsvpConfig | None, tap_feat=None) -> dict:
    s0 = singular_values(feat)
    entry = {"node": node.node, "tensor": node.tensor, "channels": int(feat.shape[1]),
             "s_before": s0.tolist(), "s_after_reference": None, "k_used": None, "s_after_model": None}
    if cfg is not None:
        entry["s_after_reference"] = singular_values(reference_perturb(feat[:1], cfg)).tolist()
        entry["k_used"] = amplified_count(s0, cfg)
    if tap_feat is not None:
        entry["s_after_model"] = singular_values(tap_feat).tolist()
    return entry


def plot_spectra(entries: list[dict], image_name: str = ""):
    """One log-scale panel per defended node: s_i before and after (reference, and the model's tap if any)."""
    from asvp.runtime.report import new_figure

    n = max(len(entries), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = new_figure(4.2 * cols, 3.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, e in zip(axes, entries):
        i = np.arange(1, len(e["s_before"]) + 1)
        ax.semilogy(i, e["s_before"], "o-", ms=3, label="before (clean)")
        if e.get("s_after_reference"):
            ax.semilogy(i, e["s_after_reference"], "s--", ms=3, label="after (asvp_reference)")
        if e.get("s_after_model"):
            ax.semilogy(i, e["s_after_model"], "x:", ms=4, label="after (defended model tap)")
        if e.get("k_used"):
            ax.axvline(e["k_used"] + 0.5, color="grey", lw=0.8, ls=":")
        title = e["tensor"] if len(e["tensor"]) <= 38 else "..." + e["tensor"][-35:]
        ax.set_title(f"{title}\n(C={e['channels']}, k={e.get('k_used', '-')})", fontsize=8)
        ax.set_xlabel("i")
        ax.set_ylabel("singular value s_i")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(entries):]:
        ax.set_visible(False)
    if image_name:
        fig.suptitle(f"Singular values at each defended node (image: {image_name})", fontsize=9)
    return fig


def tap_stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())} if v.size else {}


__all__ = ["DefendedNode", "DefenceInfo", "defence_info", "expose_tensors", "FeatureRunner", "singular_values",
           "reference_perturb", "amplified_count", "rel_change", "spectrum_entry", "plot_spectra", "tap_stats"]
