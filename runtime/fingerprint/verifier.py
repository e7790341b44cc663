"""Test whether a suspect was distilled from a marked model (`asvp fingerprint verify`):
verify(suspect, clean.onnx, marked.onnx, key) -> FingerprintResult (c, p-value, verdict).

The null distribution is exact by construction (the key is uniform on the sphere and independent of any model
that never saw the marked outputs): p = P(c' >= c) for c' one coordinate of a uniform unit vector in R^D'. No
reference models are needed for validity; they add power: the span of the reference students' coefficient
vectors (their systematic bias, key-free) is removed before the test. What is cached is the expensive,
key-independent part: the clean model's D' basis responses on the probes (`cache` directory, keyed by the clean
model's digest, the mark's tensor, basis and eps, and the probe images), so each further suspect costs one pass
over the probes.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from asvp.errors import AsvpError
from asvp.fingerprint import DEFAULT_ALPHA, check_key, coefficients, key_direction, key_id, key_statistic
from asvp.graph_passes.mark import MarkInfo, read_mark
from asvp.io import atomic_output
from asvp.onnx_utils import image_io, load_model
from asvp.runtime.evaluation.served import file_digest
from asvp.runtime.fingerprint.probes import (PROBE_SEED, ProbeModel, as_suspect, gram_matrix, probe_inputs, projections,
                                             query_outputs, task_of)
from asvp.runtime.fingerprint.references import load_references

KEY_CHECK_MIN_COS = 0.5  # the defended model's own statistic must reach this with the given key


def probe_key(clean_path, info: MarkInfo, x: np.ndarray) -> str:
    """The key of the key-independent data for these probes: clean model digest, mark tensor, basis, scale, R."""
    h = hashlib.sha256()
    h.update(file_digest(clean_path).encode())
    h.update(info.tensor.encode())
    h.update(np.asarray(info.basis, np.float64).tobytes())
    h.update(repr(float(info.probe_eps)).encode())
    h.update(info.r().tobytes())
    h.update(x.tobytes())
    return h.hexdigest()[:16]


_MEMO: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def basis_responses(clean_path, info: MarkInfo, x: np.ndarray, cache=None) -> tuple[np.ndarray, np.ndarray]:
    """(T(x), delta [D', ...]): the clean outputs and the equalised basis marks' output changes on the probes.

    Key-independent; memoised in this process and, with `cache` (a directory), on disk."""
    key = probe_key(clean_path, info, x)
    if key in _MEMO:
        return _MEMO[key]
    path = Path(cache) / f"fingerprint-basis-{key}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as z:
            _MEMO[key] = (z["clean"], z["delta"])
            return _MEMO[key]
    probe = ProbeModel(clean_path, info.tensor, info.channels)
    base = probe.run(x)
    raw = probe.basis_changes(x, base, info.w(), info.probe_eps)
    delta = np.tensordot(info.r().T, raw.astype(np.float64), axes=1).astype(np.float32)  # [D', ...]
    if path is not None:
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, clean=base, delta=delta)
    _MEMO[key] = (base, delta)
    return base, delta


@dataclass
class FingerprintResult:
    suspect: str
    statistic: float  # c = cos(u, a), a the suspect's least-squares mark coefficients (reference bias span removed)
    p_value: float  # exact, under "the suspect is independent of the key"
    alpha: float
    flagged: bool  # p < alpha
    beta: float  # share of the (linearised) mark the suspect reproduces: <S - T, d_u> / <d_u, d_u>
    key_dim: int
    key_id: str
    key_check: float  # the marked model's own statistic c with this key (must be >= KEY_CHECK_MIN_COS)
    references: list  # names of the reference models whose bias span was removed (empty: none)
    probes: dict
    mark: dict
    rel_residual: float  # ||S - T|| / ||d_u||: how far the suspect is from the clean teacher, in mark norms
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def verdict(self) -> str:
        return "flagged" if self.flagged else "not flagged"

    def summary_lines(self) -> list[str]:
        what = ("distilled from the marked model: the suspect reproduces the secret mark" if self.flagged
                else "no evidence of distillation from the marked model")
        bias = self.mark.get("bias")
        refs = (f"key space chosen away from the bias of {bias['students']} students of the clean model" if bias
                else f"bias subspace of {len(self.references)} reference model(s) removed" if self.references
                else "no reference models (exact but less powerful; see `asvp fingerprint calibrate`)")
        return [f"suspect {self.suspect}: {self.verdict.upper()} ({what})",
                f"statistic c = {self.statistic:+.4f} over {self.key_dim} key dimensions, p = {self.p_value:.3g} "
                f"(alpha {self.alpha:g}; exact null: a key independent of the suspect); {refs}",
                f"mark reproduced: beta = {self.beta:+.3f}; suspect-vs-clean distance {self.rel_residual:.1f} mark "
                f"norms; key check on the marked model c = {self.key_check:.3f}; {self.probes['count']} probe(s) "
                f"{self.probes['shape']}; key id {self.key_id}"]


@dataclass
class Verifier:
    """Everything key-independent that a verification needs, computed once: the mark's public description,
    the probes, the clean outputs, the basis responses, their Gram matrix and the reference bias."""

    clean: str
    defended: str
    info: MarkInfo
    x: np.ndarray
    base: np.ndarray
    delta: np.ndarray
    gram: np.ndarray
    probe_key: str
    refs: dict

    @classmethod
    def open(cls, clean, defended, *, cache=None, task: str | None = None, references=None) -> "Verifier":
        dmodel = load_model(defended)
        info = read_mark(dmodel)
        if info is None:
            raise AsvpError(f"{defended} carries no fingerprint mark (metadata asvp.fingerprint); mark it with "
                            "`asvp fingerprint mark`")
        cmodel = load_model(clean)
        image_io(cmodel)
        if info.tensor not in {o for n in cmodel.graph.node for o in n.output}:
            raise AsvpError(f"{clean} has no tensor {info.tensor!r} (where {defended} is marked): not its clean model")
        x = probe_inputs(task or task_of(cmodel) or task_of(dmodel))
        base, delta = basis_responses(clean, info, x, cache)
        pk = probe_key(clean, info, x)
        v = cls(str(clean), str(defended), info, x, base, delta, gram_matrix(delta), pk, load_references(cache, pk))
        if references:
            for i, ref in enumerate(references):
                fn, label = as_suspect(ref)
                v.refs[label if label not in v.refs else f"{label}#{i}"] = v.project(fn, f"reference {label}")
        return v

    def query(self, fn, what: str) -> np.ndarray:
        """fn's outputs on the probes, in chunks, checked against the clean model's (shape, finite values)."""
        return query_outputs(fn, self.x, what, self.base.shape)

    def project(self, fn, what: str) -> np.ndarray:
        return projections(self.query(fn, what), self.base, self.delta)

    def span_references(self, exclude: str | None = None) -> list[str]:
        """The reference models whose bias span the test removes, leaving out `exclude`; none when the key space
        was chosen away from such bias when marking (info.bias): removing a span there would cost the mark more
        than the bias it removes."""
        return [] if self.info.bias else [k for k in self.refs if k != exclude]

    def nuisance(self, exclude: str | None = None) -> list:
        """The mark coefficients of span_references (their systematic bias, whose span the test removes)."""
        return [coefficients(self.refs[k], self.gram) for k in self.span_references(exclude)]

    def test(self, t: np.ndarray, u: np.ndarray, exclude: str | None = None) -> tuple[float, float]:
        return key_statistic(coefficients(t, self.gram, self.nuisance(exclude)), u)

    def check_key(self, key: str) -> tuple[np.ndarray, float]:
        """The key's unit vector u in the key space, and the marked model's own statistic c under it; a one-line
        error when c < KEY_CHECK_MIN_COS (a wrong key, or a different clean model)."""
        u = key_direction(key, self.info.key_dim)
        key_check, _ = key_statistic(coefficients(self.project(as_suspect(self.defended)[0],
                                                               f"defended model {self.defended}"), self.gram), u)
        if key_check < KEY_CHECK_MIN_COS:
            raise AsvpError(f"the key does not reproduce the mark in {self.defended} (c = {key_check:.3f} < "
                            f"{KEY_CHECK_MIN_COS}): wrong key, or a different clean model")
        return u, key_check

    def verify(self, suspect, key: str, *, alpha: float = DEFAULT_ALPHA, name: str | None = None,
               t0: float | None = None) -> FingerprintResult:
        t0 = time.perf_counter() if t0 is None else t0
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise AsvpError(f"alpha must be in (0, 1), got {alpha!r}")
        u, key_check = self.check_key(key)
        fn, label = as_suspect(suspect)
        name = name or label
        return self.result(self.query(fn, f"suspect {name}"), name, key, u, key_check, alpha=alpha, t0=t0)

    def result(self, outputs: np.ndarray, name: str, key: str, u: np.ndarray, key_check: float, *,
               alpha: float = DEFAULT_ALPHA, t0: float | None = None) -> FingerprintResult:
        """The verdict on a suspect's outputs on the probes (`query`), for the key already checked by check_key (u,
        key_check): one pass over the probes per suspect, and one key check for many."""
        t0 = time.perf_counter() if t0 is None else t0
        t = projections(outputs, self.base, self.delta)
        c, p = self.test(t, u, exclude=name)
        du = (self.info.eps / self.info.probe_eps) * np.tensordot(u, self.delta.astype(np.float64), axes=1).reshape(-1)
        nd = float(du @ du)
        r = (np.asarray(outputs, np.float64) - self.base).reshape(-1)
        return FingerprintResult(
            name, c, p, float(alpha), bool(p < alpha), float(du @ r / nd) if nd > 0 else math.nan,
            self.info.key_dim, key_id(key), key_check, sorted(self.span_references(name)),
            {"count": int(len(self.x)), "shape": list(self.x.shape[1:]), "seed": PROBE_SEED}, self.info.public(),
            float(np.linalg.norm(r) / math.sqrt(nd)) if nd > 0 else math.nan, round(time.perf_counter() - t0, 1))


def verify(suspect, clean, defended, key: str, *, alpha: float = DEFAULT_ALPHA, cache=None,
           task: str | None = None, references=None, name: str | None = None) -> FingerprintResult:
    """Test whether `suspect` (ONNX path or callable) was distilled from the marked model `defended`.

    references: extra reference models (ONNX paths or callables) that never saw the marked outputs; with `cache`,
    the references stored there by `calibrate` are used too. The span of their bias is removed before the test."""
    t0 = time.perf_counter()
    check_key(key)
    v = Verifier.open(clean, defended, cache=cache, task=task, references=references)
    return v.verify(suspect, key, alpha=alpha, name=name, t0=t0)

