"""Vector transforms applied before indexing (FAISS `VectorTransform`s).

Each transform is a frozen dataclass registered as a pytree: arrays are leaves, `d_in`,
`d_out`, configuration and `is_trained` are static. Interface (shared with the codecs):

    t = Cls.create(d_in, d_out, ...)   # untrained, arrays zero-filled with final shapes
    t = t.train(x, key=key)            # host level; returns a trained copy
    y = t.apply(x)                     # (n, d_in) -> (n, d_out), jittable
    x = t.reverse(y)                   # (n, d_out) -> (n, d_in), where FAISS has one

Transforms:

- `PCAMatrix` (factory "PCA64", "PCAW64" whitening, "PCAR64" random rotation after the
  PCA, "PCAWR64" both): centre on the training mean, project on the top `d_out`
  eigenvectors of the covariance, scale component i by (eigenvalue_i + epsilon) **
  eigen_power (eigen_power = -0.5 whitens), then rotate by a random orthonormal matrix
  when random_rotation is set. Eigenvalues are variances (scatter / n), so whitened
  training data has unit variance; FAISS's are the scatter X^T X - n mean mean^T itself,
  so a FAISS "PCAW" output is this one divided by sqrt(n_train) (same directions; and
  epsilon means n times more there). FAISS draws the "PCAR" rotation from a fixed seed;
  here it comes from the `train` key. Eigenvector signs are fixed so
  that each component's largest-magnitude coefficient is positive (FAISS leaves them to
  LAPACK). `reverse` inverts the scaling and rotation and adds the mean back: for a
  non-whitened PCA it is the transpose plus the mean, the usual PCA reconstruction.
- `RandomRotationMatrix` ("RR64"): orthonormal rows (d_out <= d_in) or columns
  (d_out > d_in), the Q of the QR decomposition of a Gaussian matrix drawn from a
  `jax.random` key (signs fixed by R's diagonal, so the rotation is Haar-distributed).
- `ITQMatrix`: FAISS's ITQ rotation (Gong & Lazebnik): starting from a random rotation,
  `max_iter` (50) alternations of B = sign(V R) and R = U W^T from the SVD
  V^T B = U S W^T, which lower ||B - V R||^2, the binary quantization loss.
- `ITQTransform` ("ITQ64"): as FAISS `ITQTransform(d_in, d_out, do_pca)`: centre on the
  training mean, L2-normalise each vector (in `apply` too), PCA to d_out without a
  second centring, then the ITQ rotation. Not linear (the normalisation), so no reverse.
- `Chain`: transforms applied in order (the transform part of FAISS `IndexPreTransform`);
  `train` trains each untrained member on the output of the ones before it.
- `binarize` / `binary_codes`: the LSH step, bits x > threshold packed LSB-first as
  `jann.ops.hamming.pack_bits` (FAISS's `real_to_binary` order).

Keys: anything random takes an explicit `jax.random` key (`key=None` means
`jax.random.key(0)`); the same key gives the same matrix, bit for bit on one platform.
Matrix products use `Precision.HIGHEST` so accelerators do not drop to bf16 / tf32.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp

from jann._pytree import pytree_dataclass, static
from jann.errors import FactoryStringError, InvalidInputError, NotTrainedError
from jann.fixed_transforms import NormalizationTransform, RemapDimensions
from jann.ops.hamming import pack_bits

__all__ = ["PCAMatrix", "RandomRotationMatrix", "ITQMatrix", "ITQTransform", "Chain",
           "binarize", "binary_codes", "binary_quantization_loss", "random_orthogonal",
           "parse_transform"]

_HI = jax.lax.Precision.HIGHEST


def _key(key):
    return jax.random.key(0) if key is None else key


def _matrix(x, d: int, what: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != d:
        raise InvalidInputError(f"{what} must be (n, {d}), got shape {x.shape}")
    return x.astype(jnp.float32)


def _train_matrix(x, d: int, what: str = "training vectors") -> jax.Array:
    x = _matrix(x, d, what)
    if x.shape[0] == 0:
        raise InvalidInputError(f"{what}: need at least one vector")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise InvalidInputError(f"{what} contain NaN or inf")
    return x


def _require_trained(t):
    if not t.is_trained:
        raise NotTrainedError(f"{type(t).__name__} must be trained before use")


def _check_dims(d_in, d_out):
    d_in, d_out = int(d_in), int(d_out)
    if d_in <= 0 or d_out <= 0:
        raise InvalidInputError(f"dimensions must be positive, got d_in={d_in}, d_out={d_out}")
    return d_in, d_out


# --- shared numerical pieces ------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("m",))
def _random_orthogonal_jit(key, m):
    g = jax.random.normal(key, (m, m), jnp.float32)
    q, r = jnp.linalg.qr(g)
    return q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)[None, :]


def random_orthogonal(key, d_out: int, d_in: int | None = None) -> jax.Array:
    """(d_out, d_in) float32 with orthonormal rows (d_out <= d_in) or columns (otherwise),
    drawn from `key` (Haar-distributed for square shapes)."""
    d_in = d_out if d_in is None else d_in
    d_in, d_out = _check_dims(d_in, d_out)
    return _random_orthogonal_jit(_key(key), max(d_in, d_out))[:d_out, :d_in]


@functools.partial(jax.jit, static_argnames=("center",))
def _pca_fit(x, center):
    """mean (d,), eigenvalues (d,) descending, components (d, d) as rows."""
    n, d = x.shape
    mean = jnp.mean(x, axis=0) if center else jnp.zeros((d,), jnp.float32)
    xc = x - mean
    cov = jnp.matmul(xc.T, xc, precision=_HI) / n
    evals, evecs = jnp.linalg.eigh(cov)
    evals = jnp.maximum(evals[::-1], 0.0)
    comps = evecs[:, ::-1].T
    pivot = jnp.argmax(jnp.abs(comps), axis=1)
    signs = jnp.where(comps[jnp.arange(d), pivot] < 0, -1.0, 1.0)
    return mean, evals, comps * signs[:, None]


def _l2_normalize(x):
    norms = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
    return x / jnp.where(norms > 0, norms, 1.0)


def binary_quantization_loss(v) -> jax.Array:
    """Mean over rows of ||sign(v) - v||^2 (sign(0) = +1): what ITQ minimises."""
    v = jnp.asarray(v, jnp.float32)
    b = jnp.where(v < 0, -1.0, 1.0)
    return jnp.mean(jnp.sum((b - v) ** 2, axis=1))


def binarize(x, thresholds=0.0) -> jax.Array:
    """(n, d) -> (n, d) bool, x > thresholds (a scalar or (d,) per-dimension thresholds)."""
    return jnp.asarray(x) > jnp.asarray(thresholds)


def binary_codes(x, thresholds=0.0) -> jax.Array:
    """(n, d) -> (n, ceil(d / 8)) uint8: `binarize` then `pack_bits` (bit j of a code is
    byte j // 8, bit j % 8: FAISS `real_to_binary` / IndexLSH order)."""
    return pack_bits(binarize(x, thresholds))


# --- PCA --------------------------------------------------------------------------------

@pytree_dataclass
class PCAMatrix:
    """PCA, optionally whitened and randomly rotated (FAISS `PCAMatrix`).

    mean (d_in,), eigenvalues (d_in,) descending, components (d_out, d_in) orthonormal
    eigenvectors as rows, rotation (d_out, d_out) (identity without random_rotation).
    apply: ((x - mean) @ components.T * scale) @ rotation.T.
    """

    mean: jax.Array
    eigenvalues: jax.Array
    components: jax.Array
    rotation: jax.Array
    d_in: int = static()
    d_out: int = static()
    eigen_power: float = static(0.0)
    random_rotation: bool = static(False)
    epsilon: float = static(0.0)
    have_bias: bool = static(True)
    is_trained: bool = static(False)

    @classmethod
    def create(cls, d_in: int, d_out: int, eigen_power: float = 0.0,
               random_rotation: bool = False, *, epsilon: float = 0.0,
               have_bias: bool = True) -> "PCAMatrix":
        d_in, d_out = _check_dims(d_in, d_out)
        if d_out > d_in:
            raise InvalidInputError(f"PCA cannot output {d_out} dimensions from {d_in}")
        return cls(mean=jnp.zeros((d_in,), jnp.float32),
                   eigenvalues=jnp.zeros((d_in,), jnp.float32),
                   components=jnp.zeros((d_out, d_in), jnp.float32),
                   rotation=jnp.eye(d_out, dtype=jnp.float32),
                   d_in=d_in, d_out=d_out, eigen_power=float(eigen_power),
                   random_rotation=bool(random_rotation), epsilon=float(epsilon),
                   have_bias=bool(have_bias), is_trained=False)

    def describe(self) -> str:
        return (f"PCA{'W' if self.eigen_power == -0.5 else ''}"
                f"{'R' if self.random_rotation else ''}{self.d_out}")

    def train(self, x, *, key=None) -> "PCAMatrix":
        """Fit mean and eigenvectors on x (n, d_in); `key` draws the random rotation."""
        x = _train_matrix(x, self.d_in)
        mean, evals, comps = _pca_fit(x, self.have_bias)
        rotation = (random_orthogonal(_key(key), self.d_out) if self.random_rotation
                    else jnp.eye(self.d_out, dtype=jnp.float32))
        return dataclasses.replace(self, mean=mean, eigenvalues=evals,
                                   components=comps[:self.d_out], rotation=rotation,
                                   is_trained=True)

    @property
    def scale(self) -> jax.Array:
        """(d_out,) factor of each component: (eigenvalue + epsilon) ** eigen_power."""
        if self.eigen_power == 0:
            return jnp.ones((self.d_out,), jnp.float32)
        v = self.eigenvalues[:self.d_out] + self.epsilon
        return jnp.where(v > 0, jnp.power(jnp.where(v > 0, v, 1.0), self.eigen_power), 0.0)

    @property
    def A(self) -> jax.Array:
        """(d_out, d_in) matrix of the affine map y = A x + b (FAISS's `A`)."""
        return jnp.matmul(self.rotation * self.scale[None, :], self.components, precision=_HI)

    @property
    def b(self) -> jax.Array:
        """(d_out,) offset of y = A x + b, -A mean (FAISS's `b`)."""
        return -jnp.matmul(self.A, self.mean, precision=_HI)

    def explained_variance_ratio(self) -> jax.Array:
        """Share of the training variance kept by the d_out components."""
        return jnp.sum(self.eigenvalues[:self.d_out]) / jnp.sum(self.eigenvalues)

    def apply(self, x) -> jax.Array:
        _require_trained(self)
        x = _matrix(x, self.d_in, "vectors")
        return jnp.matmul(x - self.mean, self.A.T, precision=_HI)

    def reverse(self, y) -> jax.Array:
        """Back to the input space: undo rotation and scaling, project back, add the mean."""
        _require_trained(self)
        y = _matrix(y, self.d_out, "transformed vectors")
        z = jnp.matmul(y, self.rotation, precision=_HI)
        scale = self.scale
        z = z * jnp.where(scale != 0, 1.0 / jnp.where(scale != 0, scale, 1.0), 0.0)
        return jnp.matmul(z, self.components, precision=_HI) + self.mean


# --- random rotation ----------------------------------------------------------------------

@pytree_dataclass
class RandomRotationMatrix:
    """Random orthonormal linear map (FAISS `RandomRotationMatrix`); y = x @ matrix.T."""

    matrix: jax.Array
    d_in: int = static()
    d_out: int = static()
    is_trained: bool = static(False)

    @classmethod
    def create(cls, d_in: int, d_out: int | None = None) -> "RandomRotationMatrix":
        d_in, d_out = _check_dims(d_in, d_in if d_out is None else d_out)
        return cls(matrix=jnp.zeros((d_out, d_in), jnp.float32), d_in=d_in, d_out=d_out,
                   is_trained=False)

    @classmethod
    def random(cls, d_in: int, d_out: int | None = None, *, key) -> "RandomRotationMatrix":
        """A trained rotation straight from a key."""
        return cls.create(d_in, d_out).train(None, key=key)

    def describe(self) -> str:
        return f"RR{self.d_out}"

    def train(self, x=None, *, key=None) -> "RandomRotationMatrix":
        """Draw the matrix from `key`; x is ignored (only its dimension is checked)."""
        if x is not None:
            _matrix(x, self.d_in, "training vectors")
        return dataclasses.replace(self, matrix=random_orthogonal(_key(key), self.d_out,
                                                                  self.d_in),
                                   is_trained=True)

    @property
    def A(self) -> jax.Array:
        return self.matrix

    def apply(self, x) -> jax.Array:
        _require_trained(self)
        return jnp.matmul(_matrix(x, self.d_in, "vectors"), self.matrix.T, precision=_HI)

    def reverse(self, y) -> jax.Array:
        """Transpose: the exact inverse when d_out >= d_in."""
        _require_trained(self)
        return jnp.matmul(_matrix(y, self.d_out, "transformed vectors"), self.matrix,
                          precision=_HI)


# --- ITQ ----------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("niter",))
def _itq_fit(v, r0, niter):
    def body(_, r):
        b = jnp.where(jnp.matmul(v, r, precision=_HI) < 0, -1.0, 1.0)
        u, _s, wt = jnp.linalg.svd(jnp.matmul(v.T, b, precision=_HI), full_matrices=False)
        return jnp.matmul(u, wt, precision=_HI)

    return jax.lax.fori_loop(0, niter, body, r0)


@pytree_dataclass
class ITQMatrix:
    """ITQ rotation (FAISS `ITQMatrix`): y = x @ rotation, trained on centred data."""

    rotation: jax.Array
    d: int = static()
    max_iter: int = static(50)
    is_trained: bool = static(False)

    @classmethod
    def create(cls, d: int, max_iter: int = 50) -> "ITQMatrix":
        d, _ = _check_dims(d, d)
        return cls(rotation=jnp.zeros((d, d), jnp.float32), d=d, max_iter=int(max_iter),
                   is_trained=False)

    @property
    def d_in(self) -> int:
        return self.d

    @property
    def d_out(self) -> int:
        return self.d

    @property
    def A(self) -> jax.Array:
        return self.rotation.T

    def describe(self) -> str:
        return f"ITQMatrix{self.d}"

    def train(self, x, *, key=None) -> "ITQMatrix":
        """Alternate binarisation and Procrustes rotation, starting from a random rotation
        drawn from `key`."""
        x = _train_matrix(x, self.d)
        r0 = random_orthogonal(_key(key), self.d)
        return dataclasses.replace(self, rotation=_itq_fit(x, r0, self.max_iter),
                                   is_trained=True)

    def apply(self, x) -> jax.Array:
        _require_trained(self)
        return jnp.matmul(_matrix(x, self.d, "vectors"), self.rotation, precision=_HI)

    def reverse(self, y) -> jax.Array:
        _require_trained(self)
        return jnp.matmul(_matrix(y, self.d, "transformed vectors"), self.rotation.T,
                          precision=_HI)


@pytree_dataclass
class ITQTransform:
    """Centre, L2-normalise, PCA to d_out (if do_pca), ITQ rotation (FAISS `ITQTransform`)."""

    mean: jax.Array
    pca: PCAMatrix | None
    itq: ITQMatrix
    d_in: int = static()
    d_out: int = static()
    do_pca: bool = static(True)
    is_trained: bool = static(False)

    @classmethod
    def create(cls, d_in: int, d_out: int | None = None, do_pca: bool | None = None,
               *, max_iter: int = 50) -> "ITQTransform":
        d_in, d_out = _check_dims(d_in, d_in if d_out is None else d_out)
        do_pca = d_out != d_in if do_pca is None else bool(do_pca)
        if not do_pca and d_in != d_out:
            raise InvalidInputError(f"ITQ without PCA needs d_out == d_in, got {d_out}, {d_in}")
        pca = PCAMatrix.create(d_in, d_out, have_bias=False) if do_pca else None
        return cls(mean=jnp.zeros((d_in,), jnp.float32), pca=pca,
                   itq=ITQMatrix.create(d_out, max_iter), d_in=d_in, d_out=d_out,
                   do_pca=do_pca, is_trained=False)

    def describe(self) -> str:
        return f"ITQ{self.d_out}"

    def _normalized(self, x, mean):
        return _l2_normalize(x - mean)

    def train(self, x, *, key=None) -> "ITQTransform":
        x = _train_matrix(x, self.d_in)
        mean = jnp.mean(x, axis=0)
        xn = self._normalized(x, mean)
        pca = self.pca.train(xn) if self.do_pca else None
        v = pca.apply(xn) if self.do_pca else xn
        itq = self.itq.train(v, key=key)
        return dataclasses.replace(self, mean=mean, pca=pca, itq=itq, is_trained=True)

    def pca_stage(self, x) -> jax.Array:
        """The data ITQ rotates: centred, normalised and PCA-projected (before ITQ)."""
        _require_trained(self)
        xn = self._normalized(_matrix(x, self.d_in, "vectors"), self.mean)
        return self.pca.apply(xn) if self.do_pca else xn

    @property
    def A(self) -> jax.Array:
        """(d_out, d_in) PCA then ITQ, applied to centred, normalised vectors."""
        return self.itq.A if not self.do_pca else jnp.matmul(
            self.itq.A, self.pca.A, precision=_HI)

    def apply(self, x) -> jax.Array:
        _require_trained(self)
        xn = self._normalized(_matrix(x, self.d_in, "vectors"), self.mean)
        return jnp.matmul(xn, self.A.T, precision=_HI)


# --- chain --------------------------------------------------------------------------------

@pytree_dataclass
class Chain:
    """Transforms applied in order; same interface as a single transform.

    Stored as a linked list (head: the first transform, tail: a Chain of the rest, or
    None) so that every field is an array holder the checkpoint code already stores;
    `transforms` gives them as a tuple.
    """

    head: object
    tail: "Chain | None" = None

    @classmethod
    def create(cls, *transforms) -> "Chain":
        if len(transforms) == 1 and isinstance(transforms[0], (list, tuple)):
            transforms = tuple(transforms[0])
        if not transforms:
            raise InvalidInputError("a Chain needs at least one transform")
        for a, b in zip(transforms, transforms[1:]):
            if a.d_out != b.d_in:
                raise InvalidInputError(
                    f"chain mismatch: {type(a).__name__} outputs {a.d_out} dimensions, "
                    f"{type(b).__name__} expects {b.d_in}")
        chain = None
        for t in reversed(transforms):
            chain = cls(head=t, tail=chain)
        return chain

    @property
    def transforms(self) -> tuple:
        out, node = [], self
        while node is not None:
            out.append(node.head)
            node = node.tail
        return tuple(out)

    @property
    def d_in(self) -> int:
        return self.head.d_in

    @property
    def d_out(self) -> int:
        return self.transforms[-1].d_out

    @property
    def is_trained(self) -> bool:
        return all(t.is_trained for t in self.transforms)

    def describe(self) -> str:
        return ",".join(t.describe() for t in self.transforms)

    def train(self, x, *, key=None) -> "Chain":
        """Train each untrained member on the output of the members before it."""
        x = _train_matrix(x, self.d_in)
        transforms = self.transforms
        keys = jax.random.split(_key(key), len(transforms))
        out = []
        for i, t in enumerate(transforms):
            if not t.is_trained:
                t = t.train(x, key=keys[i])
            out.append(t)
            if i + 1 < len(transforms):
                x = t.apply(x)
        return type(self).create(*out)

    def apply(self, x) -> jax.Array:
        for t in self.transforms:
            x = t.apply(x)
        return x

    def reverse(self, y) -> jax.Array:
        for t in reversed(self.transforms):
            if not hasattr(t, "reverse"):
                raise InvalidInputError(f"{type(t).__name__} has no reverse transform")
            y = t.reverse(y)
        return y


# --- factory strings ----------------------------------------------------------------------

_PCA_RE = re.compile(r"PCA(W?)(R?)(\d+)")
_RR_RE = re.compile(r"RR(\d+)?")
_ITQ_RE = re.compile(r"ITQ(\d+)?")
_PAD_RE = re.compile(r"Pad(\d+)")


def parse_transform(description: str, d_in: int):
    """An untrained transform from a FAISS factory component: "PCA64", "PCAW64",
    "PCAR64", "PCAWR64", "RR64" / "RR", "ITQ64" / "ITQ", "L2norm", "Pad128"."""
    s = description.strip()
    if m := _PCA_RE.fullmatch(s):
        return PCAMatrix.create(d_in, int(m.group(3)), -0.5 if m.group(1) else 0.0,
                                bool(m.group(2)))
    if m := _RR_RE.fullmatch(s):
        return RandomRotationMatrix.create(d_in, int(m.group(1) or d_in))
    if m := _ITQ_RE.fullmatch(s):
        d_out = int(m.group(1) or d_in)
        return ITQTransform.create(d_in, d_out, d_out != d_in)
    if s == "L2norm":
        return NormalizationTransform.create(d_in)
    if m := _PAD_RE.fullmatch(s):
        return RemapDimensions.padding(d_in, int(m.group(1)))
    raise FactoryStringError(
        f"unknown transform {description!r}; known forms: PCA<d>, PCAW<d>, PCAR<d>, "
        "PCAWR<d>, RR[<d>], ITQ[<d>], L2norm, Pad<d>")

