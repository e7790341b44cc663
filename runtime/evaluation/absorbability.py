"""Absorbability diagnostic: can one learnable 1x1 layer undo ASVP at a feature node?

At a node with feature F [N, C, H, W], per image i, M_i = F_i.reshape(C, H*W) and ASVP's change is
D_i = M_i' - M_i = (h - 1) U_i diag(mask_i) U_i^T M_i (asvp.method.asvp_reference). If the amplified subspace
U_i were the same for every image, D would be one linear map of M, and any 1x1 convolution the attacker learns
(a FitNets adapter, or the student's next layer) could absorb it. Two numbers measure how far that is from true:

  unexplained   share of the change's energy sum_i ||D_i||^2 that ONE global affine map (a C x C matrix A and a
                bias b, the same for every pixel of every image) fitted by least squares does NOT explain:
                min_{A,b} sum_i ||D_i - (A M_i + b 1^T)||^2 / sum_i ||D_i||^2.
                `unexplained_heldout` fits A, b on half the images (even indices) and measures the residual on
                the other half, and the other way round (summed residuals / summed energies): what a learned
                adapter generalises to, and the number the verdict uses. `unexplained` is the in-sample share.
  subspace_variation
                1 - mean over image pairs of ||U_i^T U_j||_F^2 / min(k_i, k_j), U_i the k_i directions ASVP
                amplified in image i: 0 = the same subspace everywhere, 1 = orthogonal subspaces.
                `principal_angle_deg`: the mean principal angle between those subspaces, averaged over pairs.

D_i is proportional to (h - 1) (the adaptive k is chosen on the clean spectrum), so neither number depends on h.

Why the shares are small at real nodes: if the amplified directions hold a share E of the feature's energy, the
plain map A = (h - 1) I (scale everything) already leaves only (1 - E) / E of the change unexplained, whatever the
subspaces do; the fitted map does at least as well (`scaling_bound`, an upper bound on `unexplained`). With the
adaptive rule (tau = 0.9) E >= 0.9 unless k is capped, so the bound is about 11 %: ASVP at tau = 0.9 is close to
a uniform scaling of the feature by h, which any learnable layer undoes.

Verdict: a node is predicted **absorbable** when `unexplained_heldout` < ABSORBABLE_BELOW. The threshold is
calibrated on one side only: every node where distillation was measured (docs/protection.md) has an unexplained
share of a few per cent or less and showed no protection; no node with a large share has been attacked yet, so a
"not absorbable" prediction is a candidate for an attack, not evidence of protection.

The images are whatever the caller passes: the attacker's queries (asvp.api builds them with
runtime.evaluation.served.make_queries) or a user's folder (runtime.evaluation.images.load_inputs). Features come from
the clean model with the candidate tensors exposed (FeatureRunner), on any backend.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from asvp.config import AsvpConfig
from asvp.constants import ABSORBABILITY_CROP, ABSORBABILITY_QUERIES
from asvp.errors import AsvpError
from asvp.graph_passes.candidates import FeatureNode
from asvp.method import adaptive_k_mask
from asvp.onnx_utils import as_model, image_io
from asvp.runtime.evaluation.report import Section, fmt, md_table
from asvp.runtime.evaluation.served import torch_threads
from asvp.runtime.evaluation.spectrum import FeatureRunner

DEFAULT_QUERIES, DEFAULT_CROP = ABSORBABILITY_QUERIES, ABSORBABILITY_CROP  # the attacker's query crops (make_queries)
ABSORBABLE_BELOW = 0.10  # predicted absorbable when the held-out unexplained share is below this
CHUNK = 16  # images per inference call


def verdict(unexplained_heldout: float | None) -> str:
    """'absorbable' / 'not absorbable' from the held-out unexplained share ('n/a' when it is undefined)."""
    if unexplained_heldout is None or not math.isfinite(unexplained_heldout):
        return "n/a"
    return "absorbable" if unexplained_heldout < ABSORBABLE_BELOW else "not absorbable"


@dataclass
class NodeAbsorbability:
    index: int
    name: str
    op_type: str
    tensor: str
    channels: int
    unexplained: float | None  # in-sample share of ||M' - M||^2 a global 1x1 affine map does not explain
    unexplained_heldout: float | None  # the same, fitted on half the images and measured on the other half
    subspace_variation: float | None  # 1 - mean ||U_i^T U_j||_F^2 / min(k_i, k_j) over image pairs
    principal_angle_deg: float | None  # mean principal angle between the amplified subspaces of two images
    k_used_mean: float | None  # directions ASVP amplified per image (adaptive k), mean
    topk_energy: float | None  # share of ||M||^2 in those directions, mean over images
    rel_change: float | None  # ||M' - M|| / ||M|| over all images
    scaling_bound: float | None  # the unexplained share if the map were (h - 1) I: (1 - E) / E, E = top-k energy share
    verdict: str = "n/a"
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AbsorbabilityResult:
    model: str
    images: str  # where the images came from
    n_images: int
    config: dict
    threshold: float = ABSORBABLE_BELOW
    nodes: list = field(default_factory=list)  # NodeAbsorbability
    automatic: str | None = None  # the node api.defend chooses by default (marked in tables)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nodes"] = [n.to_dict() if isinstance(n, NodeAbsorbability) else n for n in self.nodes]
        return d

    def not_absorbable(self) -> list:
        return [n for n in self.nodes if n.verdict == "not absorbable"]

    def markdown(self) -> str:
        cfg = self.config
        head = (f"{self.n_images} image(s) ({self.images}); ASVP h={cfg['h']:g}, k={cfg['k']} {cfg['k_mode']}, "
                f"tau={cfg['tau']:g} (the shares do not depend on h). Unexplained = share of ||M' - M||^2 that one "
                f"global 1x1 affine map does not explain (held-out: fitted on half the images, measured on the "
                f"other half). Predicted absorbable when the held-out share < {100 * self.threshold:g} %.\n\n")
        return head + md_table(*table_rows(self.nodes, self.automatic))

    def summary_lines(self) -> list[str]:
        bad = self.not_absorbable()
        tail = (f"{len(bad)} of {len(self.nodes)} node(s) predicted not absorbable"
                + (f": {', '.join(n.name for n in bad)}" if bad else "")
                + f" (threshold: held-out unexplained share < {self.threshold:g} = absorbable); {self.seconds:.0f} s")
        return [self.markdown(), tail]

    def to_section(self) -> Section:
        return Section("Absorbability of ASVP at the candidate nodes", data=self.to_dict(), markdown=self.markdown())


def table_rows(nodes: list, automatic: str | None = None) -> tuple[list, list]:
    header = ["#", "node", "C", "unexplained %", "unexplained % (held-out)", "subspace variation",
              "principal angle deg", "mean k", "top-k energy %", "scaling bound %", "rel. change", "predicted"]
    pct = lambda v: fmt(100 * v, ".2f") if v is not None else "-"  # noqa: E731
    body = [[n.index, n.name + (" (auto)" if automatic and n.name == automatic else ""), n.channels,
             pct(n.unexplained), pct(n.unexplained_heldout), fmt(n.subspace_variation, ".3f"),
             fmt(n.principal_angle_deg, ".1f"), fmt(n.k_used_mean, ".2f"), pct(n.topk_energy),
             pct(n.scaling_bound), fmt(n.rel_change, ".3f"), n.verdict + (f" ({n.note})" if n.note else "")] for n in nodes]
    return header, body


# ---- the statistics ---------------------------------------------------------------------------------------------

class _NodeStats:
    """Streaming sufficient statistics of one node: per fold, X X^T, D X^T and ||D||^2 with X = [M; 1]; per image,
    the amplified directions U_i (masked) and their energy share."""

    def __init__(self, channels: int, cfg: AsvpConfig, perturb=None):
        self.c, self.cfg, self.perturb = channels, cfg, perturb
        self.k = min(cfg.k, channels)
        self.sxx = np.zeros((2, channels + 1, channels + 1))
        self.sdx = np.zeros((2, channels, channels + 1))
        self.sdd = np.zeros(2)
        self.smm = 0.0
        self.stop = 0.0  # energy in the amplified directions, all images
        self.bases: list[np.ndarray] = []
        self.energy: list[float] = []

    def add(self, feat: np.ndarray, first_index: int) -> None:
        m = torch.from_numpy(np.asarray(feat, dtype=np.float64)).reshape(feat.shape[0], self.c, -1)
        evals, evecs = torch.linalg.eigh(m @ m.transpose(1, 2))  # the Gram route of asvp.method.asvp_exact
        e, u = evals.flip(-1).clamp_min(0), evecs.flip(-1)  # s_i^2 and U, descending
        mask = adaptive_k_mask(e, self.cfg.tau, self.k, self.cfg.k_mode == "adaptive")
        uk = u[:, :, : self.k]
        coeff = torch.einsum("nck,ncp->nkp", uk, m) * mask.unsqueeze(-1)
        delta = (self.cfg.h - 1.0) * torch.einsum("nck,nkp->ncp", uk, coeff)  # asvp_reference(M) - M
        if self.perturb is not None:  # another perturbation (e.g. a keyed variant): its own change, same statistics
            delta = self.perturb(m) - m
        ones = torch.ones(m.shape[0], 1, m.shape[2], dtype=m.dtype)
        x = torch.cat([m, ones], dim=1)
        folds = (first_index + torch.arange(m.shape[0])) % 2
        for fold in (0, 1):
            xf, df = x[folds == fold], delta[folds == fold]
            if len(xf):
                xf, df = xf.transpose(0, 1).reshape(self.c + 1, -1), df.transpose(0, 1).reshape(self.c, -1)
                self.sxx[fold] += (xf @ xf.T).numpy()
                self.sdx[fold] += (df @ xf.T).numpy()
                self.sdd[fold] += float((df * df).sum())
        for j in range(m.shape[0]):
            total = float(e[j].sum())
            if total > 0:
                kj = int(mask[j].sum())
                self.bases.append(uk[j, :, :kj].numpy())
                self.energy.append(float(e[j, :kj].sum()) / total)
                self.stop += float(e[j, :kj].sum())
        self.smm += float((m * m).sum())

    @staticmethod
    def _fit(sxx: np.ndarray, sdx: np.ndarray) -> np.ndarray:
        """W = [A b] minimising ||D - W X||^2, from the normal equations (minimum-norm when X is rank-deficient)."""
        return np.linalg.lstsq(sxx, sdx.T, rcond=None)[0].T

    @staticmethod
    def _residual(w: np.ndarray, sxx: np.ndarray, sdx: np.ndarray, sdd: float) -> float:
        """||D - W X||^2 = ||D||^2 - 2 tr(W X D^T) + tr(W X X^T W^T), clamped at 0."""
        return max(0.0, float(sdd - 2.0 * np.sum(w * sdx) + np.sum((w @ sxx) * w)))

    def result(self) -> dict:
        sdd = float(self.sdd.sum())
        out = {"unexplained": None, "unexplained_heldout": None, "subspace_variation": None,
               "principal_angle_deg": None, "k_used_mean": None, "topk_energy": None, "rel_change": None,
               "scaling_bound": None}
        if self.smm > 0:
            out["rel_change"] = math.sqrt(sdd / self.smm)
        if self.stop > 0:
            out["scaling_bound"] = (self.smm - self.stop) / self.stop
        if self.bases:
            out["k_used_mean"] = float(np.mean([b.shape[1] for b in self.bases]))
            out["topk_energy"] = float(np.mean(self.energy))
            out["subspace_variation"], out["principal_angle_deg"] = subspace_variation(self.bases)
        if sdd <= 0:
            return out
        sxx, sdx = self.sxx.sum(0), self.sdx.sum(0)
        out["unexplained"] = self._residual(self._fit(sxx, sdx), sxx, sdx, sdd) / sdd
        if self.sdd[0] > 0 and self.sdd[1] > 0:
            held = sum(self._residual(self._fit(self.sxx[a], self.sdx[a]), self.sxx[b], self.sdx[b], self.sdd[b])
                       for a, b in ((0, 1), (1, 0)))
            out["unexplained_heldout"] = held / sdd
        return out


def measure(features, config: AsvpConfig | None = None, perturb=None) -> dict:
    """The diagnostic's numbers for one node from its features: an iterable of [n, C, H, W] arrays (images in order;
    even-numbered images form one fold, odd-numbered the other).

    perturb: optional function M [n, C, H*W] float64 tensor -> M' of the same shape, whose change M' - M is measured
    instead of the paper's ASVP with `config` (e.g. a keyed variant, asvp.variants.variant_reference; benchmarks/
    variants_search.py). The subspace statistics stay those of `config`'s amplified directions."""
    cfg = (config or AsvpConfig()).validate()
    stats, seen = None, 0
    for f in features:
        f = np.asarray(f)
        if f.ndim != 4:
            raise AsvpError(f"expected [n, C, H, W] features, got shape {f.shape}")
        stats = stats or _NodeStats(f.shape[1], cfg, perturb)
        stats.add(f, seen)
        seen += len(f)
    if stats is None:
        raise AsvpError("no features given")
    return stats.result()


def subspace_variation(bases: list[np.ndarray]) -> tuple[float | None, float | None]:
    """(1 - mean ||U_i^T U_j||_F^2 / min(k_i, k_j), mean principal angle in degrees) over all pairs i < j.

    bases: orthonormal C x k_i matrices. None, None with fewer than two. Batched: the bases are zero-padded to the
    largest k, and only the min(k_i, k_j) largest cosines of a pair are its principal angles.
    """
    n = len(bases)
    if n < 2:
        return None, None
    kmax = max(b.shape[1] for b in bases)
    u = torch.zeros(n, bases[0].shape[0], kmax, dtype=torch.float64)
    for i, b in enumerate(bases):
        u[i, :, : b.shape[1]] = torch.from_numpy(np.asarray(b, dtype=np.float64))
    ks = torch.tensor([b.shape[1] for b in bases])
    iu, ju = torch.triu_indices(n, n, offset=1)
    overlaps, angles = [], []
    for start in range(0, len(iu), 4096):  # pairs in blocks: bounded memory for many images
        i, j = iu[start : start + 4096], ju[start : start + 4096]
        cos = torch.linalg.svdvals(u[i].transpose(1, 2) @ u[j]).clamp(0.0, 1.0)  # descending
        kmin = torch.minimum(ks[i], ks[j])
        keep = (torch.arange(kmax).reshape(1, -1) < kmin.reshape(-1, 1)).to(cos.dtype)
        overlaps.append((cos**2 * keep).sum(1) / kmin)
        angles.append(torch.rad2deg(torch.arccos(cos) * keep).sum(1) / kmin)
    return 1.0 - float(torch.cat(overlaps).mean()), float(torch.cat(angles).mean())


# ---- the diagnostic ---------------------------------------------------------------------------------------------

def _batches(images) -> list[np.ndarray]:
    """[N, 3, h, w] array -> chunks of CHUNK; list of [1, 3, h, w] arrays (sizes may differ) -> as given."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise AsvpError(f"images must be an [N, 3, H, W] array, got shape {images.shape}")
        return [images[i : i + CHUNK] for i in range(0, len(images), CHUNK)]
    return [np.asarray(im, dtype=np.float32) for im in images]


def _collect(model, input_name, usable, stats, batches, backend, progress) -> None:
    if not usable:
        return
    with FeatureRunner(model, [n.output for n in usable], backend) as runner:
        seen = 0
        for batch in tqdm(batches, desc="absorbability", disable=not progress, leave=False):
            feats = runner.features({input_name: np.ascontiguousarray(batch, dtype=np.float32)})
            for n in usable:
                f = feats[n.output]
                if f.ndim != 4 or f.shape[1] != n.channels:
                    raise AsvpError(f"node {n.name!r} gave a feature of shape {f.shape}; expected [N, {n.channels}, H, W]")
                stats[n.output].add(f, seen)
            seen += len(batch)


def absorbability(model, nodes: list[FeatureNode], images, config: AsvpConfig | None = None, *,
                  backend: str = "onnxrt-cpu", source: str = "", automatic: str | None = None,
                  model_label: str = "", progress: bool = True, threads: int = 1) -> AbsorbabilityResult:
    """The diagnostic at each of `nodes` (candidates of `model`, e.g. graph_passes.select.candidates) on `images`.

    model: the CLEAN model (path or ModelProto). images: an [N, 3, h, w] float32 array (the attacker's queries)
    or a list of [1, 3, h, w] arrays. config: the ASVP settings (h, k, k_mode, tau; default AsvpConfig()).
    threads: torch's threads while it runs (restored afterwards). One by default: batched eigh of small C x C
    matrices measured ~100x slower on 2 threads of 2 shared cores.
    """
    t0 = time.perf_counter()
    cfg = (config or AsvpConfig()).validate()
    model = as_model(model)
    input_name, _ = image_io(model)
    batches = _batches(images)
    n_images = sum(len(b) for b in batches)
    if n_images < 2:
        raise AsvpError(f"the absorbability diagnostic needs at least 2 images (one per fold), got {n_images}")
    usable = [n for n in nodes if n.channels > cfg.k]
    stats = {n.output: _NodeStats(n.channels, cfg) for n in usable}
    with torch_threads(threads):
        _collect(model, input_name, usable, stats, batches, backend, progress)
    rows = []
    for n in nodes:
        if n.output in stats:
            r = stats[n.output].result()
            rows.append(NodeAbsorbability(n.index, n.name, n.op_type, n.output, n.channels, **r,
                                          verdict=verdict(r["unexplained_heldout"]),
                                          note="" if r["unexplained_heldout"] is not None else "ASVP leaves it unchanged"))
        else:
            rows.append(NodeAbsorbability(n.index, n.name, n.op_type, n.output, n.channels, *([None] * 8),
                                          note=f"C={n.channels} <= k={cfg.k}"))
    return AbsorbabilityResult(model_label, source or "caller's images", n_images, cfg.to_dict(), ABSORBABLE_BELOW,
                               rows, automatic, round(time.perf_counter() - t0, 1))
