"""Recurrent weight health: persistent power iteration for the spectral radius and the largest
singular value of slowly changing square matrices (recurrent weights in training).

Used by :class:`gradwandb.BPTTMonitor` every ``spectral_every`` steps, per gate block of the
recurrent weights (:func:`recurrent_maps`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradwandb.live.stats import kernels as S


class PowerIteration:
    """Persistent estimates of the spectral radius and the largest singular value of a batch of
    square matrices that change slowly (weights in training); the iterates are kept between
    calls, so each call continues where the last one stopped.

    Method. Each call runs ``iters`` steps (``warmup`` more on the first call) of two block
    power iterations with ``block`` orthonormal vectors: one on W (subspace iteration), one on
    W^T W. The largest singular value is the square root of the largest Ritz value of W^T W
    on its block (from below; exact once the block holds the top singular vector). For the
    spectral radius, where W is not symmetric, the dominant eigenvalue may be a complex pair or
    one of many of equal modulus, so two estimates are made: the largest Ritz value (by
    modulus) of W on its block, which captures complex pairs and is used when its residual
    ||W y - lambda y|| is below ``tol`` times |lambda|; otherwise the growth rate of the first
    vector, exp(mean ln ||W q||) over this call's iterations (the ||W^k v||^(1/k) estimate),
    which is exact for orthogonal times scale, where no block ever converges.

    Accuracy, measured after the first call and two more (20 seeds each of Gaussian matrices
    of size 16 to 128, float32 or float64, and of orthogonal matrices perturbed by 1-30%):
    spectral radius within 0.5% on average and 1.5% at worst; sigma_max within 1e-6 relative
    (2e-7 in float32); symmetric matrices and orthogonal times scale to rounding. The first
    call's estimate is the roughest; a weight that moved between calls is tracked from where
    the iterates were. The device work returns one small tensor per call (:meth:`advance`,
    no sync); :meth:`read` finishes on the host (eigenvalues of ``block`` x ``block`` matrices).

    >>> est = PowerIteration()
    >>> w = torch.tensor([[0.0, -2.0], [2.0, 0.0]])  # a rotation times 2: eigenvalues +-2i
    >>> [(round(r, 6), round(s, 6)) for r, s in est.estimate(w)]
    [(2.0, 2.0)]
    """

    def __init__(
        self, iters: int = 20, warmup: int = 50, block: int = 4, tol: float = 0.05, seed: int = 0
    ) -> None:
        if iters < 1 or warmup < 0 or block < 1:
            raise ValueError(
                f"PowerIteration needs iters >= 1, warmup >= 0, block >= 1; got iters={iters}, "
                f"warmup={warmup}, block={block}"
            )
        self.iters, self.warmup, self.block, self.tol, self.seed = iters, warmup, block, tol, seed
        # [2, b, n, p]: orthonormal blocks, [0] iterated with W, [1] with W^T W
        self._basis: Tensor | None = None
        self._restart: Tensor | None = None  # [b, n, p]: columns to restart a vanished one

    def advance(self, matrices: Tensor) -> Tensor:
        """Iterate on ``matrices`` ([b, n, n] or [n, n]); a device tensor for :meth:`read`."""
        with torch.no_grad():
            w = matrices.detach()
            w = w.unsqueeze(0) if w.dim() == 2 else w
            if w.dim() != 3 or w.shape[-1] != w.shape[-2]:
                raise ValueError(f"PowerIteration needs square matrices, got {tuple(w.shape)}")
            if w.dtype not in (torch.float32, torch.float64):
                w = w.float()
            steps = self.iters + self._prepare(w)
            basis, restart = self._basis, self._restart
            assert basis is not None and restart is not None
            logs = []
            for k in range(steps):
                wq = w @ basis[0]
                if k >= steps - self.iters:
                    first = torch.linalg.vector_norm(wq[..., 0], dim=-1, dtype=torch.float64)
                    logs.append(first.clamp_min(_tiny(w.dtype)).log())
                basis = _orthonormalize(torch.stack([wq, w.mT @ (w @ basis[1])]), restart)
            self._basis = basis
            q, v = basis[0], basis[1]
            wq, wv = w @ q, w @ v
            ritz = q.mT @ wq
            residual = wq - q @ ritz
            parts = [ritz, residual.mT @ residual, wv.mT @ wv]
            flat = [p.flatten(1).double() for p in parts]
            return torch.cat([*flat, torch.stack(logs).mean(0).unsqueeze(1)], dim=1)

    def read(self, values: Sequence[float]) -> list[tuple[float, float]]:
        """``(spectral_radius, sigma_max)`` per matrix from the host copy of an advance()."""
        assert self._basis is not None
        p = self._basis.shape[-1]
        width = 3 * p * p + 1
        out = []
        for i in range(len(values) // width):
            row = torch.tensor(values[i * width : (i + 1) * width], dtype=torch.float64)
            ritz, gram_res, gram_v = (row[k * p * p : (k + 1) * p * p].view(p, p) for k in range(3))
            growth = math.exp(float(row[-1]))
            lam, vecs = torch.linalg.eig(ritz)
            top = int(lam.abs().argmax())
            size = float(lam[top].abs())
            s = vecs[:, top]
            res = float((s.conj() @ gram_res.to(s.dtype) @ s).real.clamp_min(0).sqrt())
            radius = size if size > 0 and res < self.tol * size else growth
            sigma = math.sqrt(max(float(torch.linalg.eigvalsh(gram_v).max()), 0.0))
            out.append((radius, sigma))
        return out

    def estimate(self, matrices: Tensor) -> list[tuple[float, float]]:
        """:meth:`advance` then :meth:`read`: one host sync. For tests and one-off use."""
        return self.read(S.to_host({"x": self.advance(matrices)})["x"])

    def _prepare(self, w: Tensor) -> int:
        """Start (or move) the iterates for ``w``; the extra warm-up iterations to run."""
        b, n, _ = w.shape
        p = min(self.block, n)
        kept = self._basis is not None and self._basis.shape == (2, b, n, p)
        if kept and self._basis is not None and self._restart is not None:
            self._basis = self._basis.to(w.device, w.dtype)
            self._restart = self._restart.to(w.device, w.dtype)
            return 0
        gen = torch.Generator(device=w.device).manual_seed(self.seed)
        start = torch.randn(b, n, p, generator=gen, device=w.device, dtype=w.dtype)
        self._restart = _orthonormalize(start, start)
        self._basis = torch.stack([self._restart, self._restart])
        return self.warmup


def _tiny(dtype: torch.dtype) -> float:
    return math.sqrt(torch.finfo(dtype).tiny)


def _orthonormalize(z: Tensor, restart: Tensor) -> Tensor:
    """Columns of ``z`` [b, n, p] made orthonormal (Gram-Schmidt, twice, on the device).

    A column that vanished (W times it is 0) restarts from ``restart``'s, so a matrix that is
    zero for a while (zero init) does not leave the iteration stuck at zero.
    """
    tiny = _tiny(z.dtype)
    cols: list[Tensor] = []
    for j in range(z.shape[-1]):
        c = z[..., j]
        c = torch.where(
            torch.linalg.vector_norm(c, dim=-1, keepdim=True) > tiny, c, restart[..., j]
        )
        if cols:
            basis = torch.stack(cols, dim=-1)
            for _ in range(2):
                c = c - (basis @ (basis.mT @ c.unsqueeze(-1))).squeeze(-1)
        cols.append(c / torch.linalg.vector_norm(c, dim=-1, keepdim=True).clamp_min(tiny))
    return torch.stack(cols, dim=-1)


# Row blocks of weight_hh, in PyTorch's order; a vanilla RNN has one block and no gate (None).
GATES: dict[str, tuple[str, ...]] = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n")}


def recurrent_maps(module: nn.RNNBase) -> tuple[list[tuple[str, str | None]], Tensor]:
    """Names ``(weight, gate)`` and the stacked square recurrent maps [n, H, H] (detached) of a
    recurrent module, one per layer, direction and gate block (gate None for a vanilla RNN).

    A block of ``weight_hh`` maps h_{t-1} to one gate's pre-activation; with ``proj_size`` the
    square map is ``weight_hr @ block`` (h_{t-1} to the next projected state).

    >>> names, maps = recurrent_maps(torch.nn.GRU(2, 3, bidirectional=True))
    >>> names[:4], tuple(maps.shape)
    ([('weight_hh_l0', 'r'), ('weight_hh_l0', 'z'), ('weight_hh_l0', 'n'), \
('weight_hh_l0_reverse', 'r')], (6, 3, 3))
    """
    gates = GATES.get(type(module).__name__, ())
    blocks = max(len(gates), 1)
    names: list[tuple[str, str | None]] = []
    mats = []
    for layer in range(module.num_layers):
        for suffix in ("", "_reverse")[: 2 if module.bidirectional else 1]:
            name = f"weight_hh_l{layer}{suffix}"
            w = getattr(module, name).detach()
            per_gate = w.reshape(blocks, w.shape[0] // blocks, w.shape[1])
            if getattr(module, "proj_size", 0):
                per_gate = getattr(module, f"weight_hr_l{layer}{suffix}").detach() @ per_gate
            mats.append(per_gate)
            names += [(name, g) for g in gates] if gates else [(name, None)]
    return names, torch.cat(mats)
