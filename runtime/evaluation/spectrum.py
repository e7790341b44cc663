"""Clean features at the defended nodes, and their singular-value spectra before and after ASVP (validation).

Clean features come from the *clean* model with the node tensors added to graph.outputs (onnx-graphsurgeon),
run on the same backend as the models under test. "After" is `asvp_reference` (float64 SVD) applied to that
clean feature with the defended model's recorded configuration: what the defence does at that node in
isolation. (With several inline nodes, a later node sees upstream-perturbed features in the defended model;
the spectrum shows each node on clean input.) For tap placement the defended model's own perturbed feature
(its extra output) is shown too.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.graph_passes.expose import expose_tensors
from asvp.graph_passes.metadata import DefendedNode
from asvp.method import adaptive_k_mask, asvp_reference
from asvp.runtime.engines import backends
from asvp.runtime.evaluation.report import new_figure


class FeatureRunner:
    """Runs the clean model with some internal tensors exposed, on a given backend (context manager)."""

    def __init__(self, model, names: list[str], backend: str, input_shape=None, precision: str = "fp32"):
        self.names = list(names)
        exposed = expose_tensors(model, self.names)
        # A file, not bytes: the tensorrt backend parses ONNX from a path.
        self._tmp = tempfile.TemporaryDirectory(prefix="asvp-features-")
        path = Path(self._tmp.name) / "clean_exposed.onnx"
        onnx.save(exposed, str(path))
        try:
            self.runner = backends.make_runner(path, backend, input_shape=input_shape, name="clean+features",
                                               precision=precision)
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
    f = np.asarray(feat, dtype=np.float64)
    if f.ndim != 4:
        raise AsvpError(f"expected an NCHW feature, got shape {f.shape}")
    m = torch.from_numpy(f[0].reshape(f.shape[1], -1))
    return torch.linalg.svdvals(m).numpy()


def reference_perturb(feat: np.ndarray, cfg: AsvpConfig) -> np.ndarray:
    return asvp_reference(torch.from_numpy(np.asarray(feat, dtype=np.float64)), cfg).numpy()


def amplified_count(s_before: np.ndarray, cfg: AsvpConfig) -> int:
    """k actually used for this sample (adaptive rule on s^2, capped at cfg.k)."""
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


