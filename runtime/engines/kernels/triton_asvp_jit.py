"""The Triton kernels behind `triton_asvp` (this module imports triton; only `triton_env.load_kernels` imports it).

Per sample n, M = F[n] viewed as C x HW (contiguous NCHW), CP = C padded to a power of two >= 16:

    asvp_gram_kernel    grid (N, S): program (n, s) sums M_t M_t^T over its pixel range -> part[n, s] (CP x CP fp32)
    asvp_eig_kernel     grid (N,):   G = sum_s part[n, s]; Jacobi eigendecomposition of G / trace(G) on chip;
                                      adaptive mask; Q = U diag((h - 1) mask) U^T -> q[n] (CP x CP fp32)
    asvp_apply_kernel   grid (N, S'): out tile = M_t + Q M_t (a K-loop over CP x 16 blocks of Q), stored in the
                                      output's dtype
    asvp_fused_kernel   grid (N,):   all three in one program per sample, no workspace; the kernel the TensorRT
                                      AOT route embeds (its argument order is TensorRT's: inputs, scalars, outputs)

Every dot is fp32 with input_precision="ieee" (TF32 would cost ~1e-3 relative). Loops whose trip count depends
on runtime sizes are `while` loops: Triton's CPU interpreter cannot use a runtime scalar as a `range` bound.

The loops need a GPU to be fast; only their numerics are checked without one (TRITON_INTERPRET=1, CPU tensors)
and their compilation for sm_80..sm_120 (triton.compile with an explicit target: registers, spills and shared
memory per architecture, benchmarks/kernel_compile.py). GPU speed is unmeasured.
"""
import triton
import triton.language as tl


@triton.jit
def _sym_eig(a, CP: tl.constexpr, MAX_SWEEPS: tl.constexpr, TOL: tl.constexpr):
    """Parallel cyclic Jacobi on a symmetric fp32 [CP, CP] matrix: (eigenvalues [CP], eigenvectors as columns, sweeps).

    One round rotates CP/2 disjoint pairs at once, A <- J^T A J, V <- V J. Partner rows/columns and the 2 x 2
    blocks' entries are fetched with tl.gather (exact), so a round costs O(CP^2), not a CP^3 dot. The rotation angle is the
    classic one that zeroes A[p, q], t = 2 b sign(d) / (|d| + sqrt(d^2 + 4 b^2)) with d = A[q, q] - A[p, p], b the
    symmetrised A[p, q]; it is 0 when b = 0 (zero or padded rows never rotate: padding stays exactly zero).
    Sweeps (CP - 1 rounds each) run until the off-diagonal Frobenius norm is <= TOL * ||A||_F, at most MAX_SWEEPS.
    """
    idx = tl.arange(0, CP)
    rows = idx[:, None]
    cols = idx[None, :]
    eye = rows == cols
    v = tl.where(eye, 1.0, 0.0)
    fro2 = tl.sum(tl.sum(a * a, axis=1), axis=0)
    off2 = tl.sum(tl.sum(tl.where(eye, 0.0, a * a), axis=1), axis=0)
    sweeps = 0
    m = CP - 1
    while (off2 > (TOL * TOL) * fro2) & (sweeps < MAX_SWEEPS):
        for r in range(CP - 1):
            # circle-method tournament: round r pairs {i, j} with i + j = 2r (mod CP - 1), and {r, CP - 1}; over
            # CP - 1 rounds every pair meets once (CP - 1 is odd). 2r - i + m >= 1 keeps % on non-negative values.
            pi = (2 * r - idx + m) % m
            pi = tl.where(idx == r, m, pi)
            pi = tl.where(idx == m, r, pi)
            pic = pi[:, None]
            a_rows = tl.gather(a, tl.broadcast_to(pic, (CP, CP)), 0)  # a_rows[i, :] = a[pi[i], :]
            d = tl.reshape(tl.gather(a, rows, 1), [CP])  # a[i, i]
            dp = tl.reshape(tl.gather(a_rows, pic, 1), [CP])  # a[pi[i], pi[i]]
            b_ij = tl.reshape(tl.gather(a, pic, 1), [CP])  # a[i, pi[i]]
            b_ji = tl.reshape(tl.gather(a_rows, rows, 1), [CP])  # a[pi[i], i]
            b = 0.5 * (b_ij + b_ji)  # both members of a pair use the same b
            is_p = idx < pi  # i is the pair's p (smaller index)
            dd = tl.where(is_p, dp - d, d - dp)  # a_qq - a_pp, the same for both members
            sg = tl.where(dd >= 0.0, 1.0, -1.0)
            den = tl.abs(dd) + tl.sqrt_rn(dd * dd + 4.0 * b * b)
            t = tl.where(den > 0.0, tl.div_rn(2.0 * b * sg, tl.where(den > 0.0, den, 1.0)), 0.0)
            c = tl.div_rn(tl.full([CP], 1.0, tl.float32), tl.sqrt_rn(1.0 + t * t))
            s = t * c
            sig = tl.where(is_p, s, -s)  # J[i, pi[i]]; J[i, i] = c
            # (J^T A)[i, :] = c_i A[i, :] - sig_i A[pi[i], :];  (B J)[:, j] = c_j B[:, j] - sig_j B[:, pi[j]]
            bm = c[:, None] * a - sig[:, None] * a_rows
            bm_cols = tl.gather(bm, tl.broadcast_to(pi[None, :], (CP, CP)), 1)
            a = bm * c[None, :] - bm_cols * sig[None, :]
            v_cols = tl.gather(v, tl.broadcast_to(pi[None, :], (CP, CP)), 1)
            v = v * c[None, :] - v_cols * sig[None, :]
        off2 = tl.sum(tl.sum(tl.where(eye, 0.0, a * a), axis=1), axis=0)
        sweeps += 1
    lam = tl.sum(tl.where(eye, a, 0.0), axis=1)
    return lam, v, sweeps


@triton.jit
def _asvp_update(g, k, hm1, tau, adaptive, CP: tl.constexpr, MAX_SWEEPS: tl.constexpr, TOL: tl.constexpr):
    """From a Gram matrix g [CP, CP] (fp32): Q = U diag((h - 1) mask) U^T, plus (sorted energies, sorted mask, sweeps).

    Eigenvalues of g / trace(g) (clamped at 0) are the energies; direction i precedes j when its energy is larger
    (ties: lower index first). mask_i = rank_i < k and, when adaptive, (energy of the directions before i) <
    tau * total: exactly `asvp.method.adaptive_k_mask`. A zero g gives Q = 0 (the output is then M, exactly).
    """
    idx = tl.arange(0, CP)
    eye = idx[:, None] == idx[None, :]
    g = 0.5 * (g + tl.trans(g))
    trace = tl.sum(tl.sum(tl.where(eye, g, 0.0), axis=1), axis=0)
    inv = tl.where(trace > 0.0, tl.div_rn(1.0, tl.where(trace > 0.0, trace, 1.0)), 0.0)
    lam, v, sweeps = _sym_eig(g * inv, CP, MAX_SWEEPS, TOL)
    lam = tl.maximum(lam, 0.0)
    li = lam[:, None]
    lj = lam[None, :]
    prec = (lj > li) | ((lj == li) & (idx[None, :] < idx[:, None]))  # prec[i, j]: j comes before i
    rank = tl.sum(prec.to(tl.int32), axis=1)
    before = tl.sum(tl.where(prec, lj, 0.0), axis=1)
    total = tl.sum(lam, axis=0)
    keep = (rank < k) & ((before < tau * total) | (adaptive == 0))
    w = tl.where(keep, hm1, 0.0)
    # Q as a sum of CP rank-one terms, not tl.dot(V diag(w), V^T): that dot staged both CP x CP operands in shared
    # memory, 128 KB at CP = 128, more than sm_86/89/120 (A10, L4, RTX) give one block. This is O(CP^3) once per
    # sample, about two Jacobi rounds' worth.
    q = tl.zeros([CP, CP], dtype=tl.float32)
    for j in range(CP):
        vj = tl.sum(tl.where(idx[None, :] == j, v, 0.0), axis=1)  # column j of V
        wj = tl.sum(tl.where(idx == j, w, 0.0), axis=0)
        q += (wj * vj)[:, None] * vj[None, :]
    # sorted views for diagnostics: slot r holds the direction of rank r
    at_rank = rank[None, :] == idx[:, None]  # [r, i]
    energies = tl.sum(tl.where(at_rank, lam[None, :], 0.0), axis=1) * trace
    kept = tl.sum(tl.where(at_rank, keep.to(tl.float32)[None, :], 0.0), axis=1)
    return q, energies, kept, sweeps


@triton.jit
def asvp_gram_kernel(x_ptr, part_ptr, HW, C: tl.constexpr, CP: tl.constexpr, BLOCK_P: tl.constexpr,
                      ITERS: tl.constexpr):
    n = tl.program_id(0)
    sid = tl.program_id(1)
    nsplit = tl.num_programs(1)
    rows = tl.arange(0, CP)[:, None]
    cols = tl.arange(0, CP)[None, :]
    pix = tl.arange(0, BLOCK_P)[None, :]
    base = x_ptr + n.to(tl.int64) * C * HW
    acc = tl.zeros([CP, CP], dtype=tl.float32)
    start = sid * (BLOCK_P * ITERS)
    for it in range(ITERS):
        offs = start + it * BLOCK_P + pix
        m = tl.load(base + rows * HW + offs, mask=(rows < C) & (offs < HW), other=0.0).to(tl.float32)
        acc = tl.dot(m, tl.trans(m), acc, input_precision="ieee")
    tl.store(part_ptr + (n * nsplit + sid).to(tl.int64) * (CP * CP) + rows * CP + cols, acc)


@triton.jit
def asvp_eig_kernel(part_ptr, nsplit, q_ptr, aux_ptr, k, hm1, tau, adaptive, CP: tl.constexpr,
                     MAX_SWEEPS: tl.constexpr, TOL: tl.constexpr):
    n = tl.program_id(0)
    idx = tl.arange(0, CP)
    tile = idx[:, None] * CP + idx[None, :]
    base = part_ptr + n.to(tl.int64) * nsplit * (CP * CP)
    g = tl.zeros([CP, CP], dtype=tl.float32)
    s = 0
    while s < nsplit:  # fixed order: deterministic
        g += tl.load(base + s * (CP * CP) + tile)
        s += 1
    q, energies, kept, sweeps = _asvp_update(g, k, hm1, tau, adaptive, CP, MAX_SWEEPS, TOL)
    tl.store(q_ptr + n * (CP * CP) + tile, q)
    aux = aux_ptr + n * (3 * CP)
    tl.store(aux + idx, energies)
    tl.store(aux + CP + idx, kept)
    tl.store(aux + 2 * CP + idx, tl.where(idx == 0, (idx * 0 + sweeps).to(tl.float32), 0.0))


@triton.jit
def asvp_apply_kernel(x_ptr, q_ptr, y_ptr, HW, C: tl.constexpr, CP: tl.constexpr, BLOCK_P: tl.constexpr,
                       ITERS: tl.constexpr, BLOCK_K: tl.constexpr):
    """out tile = M_t + Q M_t as a K-loop: Q is read in CP x BLOCK_K column blocks (from L2/L1; it is the same for
    every program of a sample), so no thread holds a whole row of Q: a full [CP, CP] operand spilled registers."""
    n = tl.program_id(0)
    sid = tl.program_id(1)
    rows = tl.arange(0, CP)[:, None]
    pix = tl.arange(0, BLOCK_P)[None, :]
    kk = tl.arange(0, BLOCK_K)
    qbase = q_ptr + n.to(tl.int64) * (CP * CP)
    off = n.to(tl.int64) * C * HW
    start = sid * (BLOCK_P * ITERS)
    for it in range(ITERS):
        offs = start + it * BLOCK_P + pix
        inside = (rows < C) & (offs < HW)
        acc = tl.load(x_ptr + off + rows * HW + offs, mask=inside, other=0.0).to(tl.float32)
        for kb in range(0, CP, BLOCK_K):
            kr = kb + kk
            qc = tl.load(qbase + rows * CP + kr[None, :])
            mc = tl.load(x_ptr + off + kr[:, None] * HW + offs, mask=(kr[:, None] < C) & (offs < HW),
                         other=0.0).to(tl.float32)
            acc = tl.dot(qc, mc, acc, input_precision="ieee")
        tl.store(y_ptr + off + rows * HW + offs, acc.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def asvp_fused_kernel(x_ptr, HW, y_ptr, C: tl.constexpr, CP: tl.constexpr, K: tl.constexpr, HM1: tl.constexpr,
                       TAU: tl.constexpr, ADAPTIVE: tl.constexpr, BLOCK_P: tl.constexpr,
                       MAX_SWEEPS: tl.constexpr, TOL: tl.constexpr):
    """One program per sample: Gram, eigensolver, update. Needs no workspace and no second launch."""
    n = tl.program_id(0)
    rows = tl.arange(0, CP)[:, None]
    pix = tl.arange(0, BLOCK_P)[None, :]
    off = n.to(tl.int64) * C * HW
    acc = tl.zeros([CP, CP], dtype=tl.float32)
    p = 0
    while p < HW:
        offs = p + pix
        m = tl.load(x_ptr + off + rows * HW + offs, mask=(rows < C) & (offs < HW), other=0.0).to(tl.float32)
        acc = tl.dot(m, tl.trans(m), acc, input_precision="ieee")
        p += BLOCK_P
    q, energies, kept, sweeps = _asvp_update(acc, K, HM1, TAU, ADAPTIVE, CP, MAX_SWEEPS, TOL)
    p = 0
    while p < HW:
        offs = p + pix
        inside = (rows < C) & (offs < HW)
        m = tl.load(x_ptr + off + rows * HW + offs, mask=inside, other=0.0).to(tl.float32)
        out = m + tl.dot(q, m, input_precision="ieee")
        tl.store(y_ptr + off + rows * HW + offs, out.to(y_ptr.dtype.element_ty), mask=inside)
        p += BLOCK_P
