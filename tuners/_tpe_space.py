"""TPE's view of a search space: a flat list of leaves in internal coordinates, grouped as a tree.

Every parameter (nested ones included) becomes a *leaf* with one internal coordinate:

* numeric leaves (``uniform``/``loguniform``/``normal``/``lognormal``, their ``q`` variants and
  ``randint``) live in ``u`` in ``[0, 1]``, chosen so that the prior is *uniform* in ``u``:
  ``u = (T(x) - T(low)) / (T(high) - T(low))`` for the uniform types (``T`` = identity or log),
  ``u = Phi((T(x) - mu) / sigma)`` for the normal types, and ``u = (x - low + 1/2) / (high - low)``
  for ``randint``.  Quantised leaves (``randint``, ``q*``) keep the *bin width* of each value
  in ``u`` as well, so kernels are never narrower than the grid;
* categorical leaves (``choice`` and the matrix forms) hold the option index.

Each level of the space (the top level, and the sub-space of every nested option) is a
:class:`Group`; a group is active in a trial when its parent option was chosen.  Conditional
sub-trees are therefore handled by fitting each group on the trials where it is active.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from hpo.search_space import (Categorical, Dimension, IntRange, NestedOption, Numeric, SearchSpace,
                              nested_value)

__all__ = ["Leaf", "Group", "CompiledSpace", "compile_space", "ndtr", "ndtri"]


# scipy.special costs ~0.4 s to import: load it on the first suggestion, not with ``import tuners``.
def ndtr(x: Any) -> Any:
    """Standard normal CDF (scipy.special.ndtr)."""
    from scipy.special import ndtr as f
    return f(x)


def ndtri(p: Any) -> Any:
    """Inverse of :func:`ndtr` (scipy.special.ndtri)."""
    from scipy.special import ndtri as f
    return f(p)

_U_EPS = 1e-12  # keeps normal-type coordinates away from exactly 0 / 1


@dataclass
class Leaf:
    """One parameter of the space (at any depth) and its internal coordinate."""

    index: int
    dim: Dimension
    categorical: bool
    n_options: int = 0          # categorical only
    discrete: bool = False      # numeric with a grid (randint, q*): candidates are snapped to it
    kind: str = ""              # numeric: "int", "uniform", "normal"
    log: bool = False
    # numeric constants (uniform: transformed bounds; normal: mu/sigma in transformed units)
    t_low: float = 0.0
    t_high: float = 1.0
    option_index: dict[Any, int] = field(default_factory=dict)   # hashable options -> index

    # -- numeric: scalar, exact -------------------------------------------------------------------
    def encode(self, value: Any) -> tuple[float, float]:
        """(u, bin width in u) of a user value; raises ValueError when it is not in this leaf."""
        dim = self.dim
        if self.categorical:
            return float(self.option_of(value)), 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{dim.name}: {value!r} is not a finite number")
        x = float(value)
        if self.kind == "int":
            assert isinstance(dim, IntRange)
            if x != int(x) or not dim.low <= x < dim.high:
                raise ValueError(f"{dim.name}: {value!r} not in randint [{dim.low}, {dim.high})")
            span = dim.high - dim.low
            return (x - dim.low + 0.5) / span, 1.0 / span
        assert isinstance(dim, Numeric)
        if self.log and x <= 0:
            raise ValueError(f"{dim.name}: {value!r} must be > 0")
        u = self._to_u(x)
        width = 0.0
        if dim.q is not None:
            lo = x - dim.q / 2
            if self.log and lo <= 0:
                lo = dim.low if self.kind == "uniform" else 0.0
            ulo = self._to_u(lo) if (not self.log or lo > 0) else 0.0
            width = max(self._to_u(x + dim.q / 2) - ulo, 1e-12)
        return u, width

    def _to_u(self, x: float) -> float:
        t = math.log(x) if self.log else x
        if self.kind == "uniform":
            u = (t - self.t_low) / (self.t_high - self.t_low)
            return min(max(u, 0.0), 1.0)
        u = float(ndtr((t - self.t_low) / self.t_high))
        return min(max(u, _U_EPS), 1.0 - _U_EPS)

    def decode(self, u: float) -> Any:
        """The user value at internal coordinate ``u`` (exact: what the user receives)."""
        dim = self.dim
        if self.categorical:
            return int(u)  # option index; the caller maps it (nested options need their sub-tree)
        if self.kind == "int":
            assert isinstance(dim, IntRange)
            span = dim.high - dim.low
            return int(dim.low + min(max(int(math.floor(u * span)), 0), span - 1))
        assert isinstance(dim, Numeric)
        if self.kind == "uniform":
            t = self.t_low + min(max(u, 0.0), 1.0) * (self.t_high - self.t_low)
            x = math.exp(t) if self.log else t
            x = min(max(x, dim.low), dim.high)
        else:
            z = float(ndtri(min(max(u, _U_EPS), 1.0 - _U_EPS)))
            t = self.t_low + self.t_high * z
            x = math.exp(t) if self.log else t
        v = dim.quantise(x)
        if self.log and v <= 0:  # qlognormal rounds tiny values to 0, which is not a valid point
            v = dim.quantise(dim.q)  # type: ignore[arg-type]
        return v

    # -- numeric: vectorised, for candidates --------------------------------------------------------
    def snap(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidates ``u`` moved onto this leaf's grid, with their bin widths (discrete leaves)."""
        dim = self.dim
        if self.kind == "int":
            assert isinstance(dim, IntRange)
            span = dim.high - dim.low
            k = np.clip(np.floor(u * span), 0, span - 1)
            return (k + 0.5) / span, np.full(u.shape, 1.0 / span)
        assert isinstance(dim, Numeric) and dim.q is not None
        q = dim.q
        if self.kind == "uniform":
            t = self.t_low + np.clip(u, 0.0, 1.0) * (self.t_high - self.t_low)
            x = np.exp(t) if self.log else t
            v = np.clip(np.round(x / q) * q, dim.low, dim.high)
        else:
            t = self.t_low + self.t_high * ndtri(np.clip(u, _U_EPS, 1.0 - _U_EPS))
            x = np.exp(t) if self.log else t
            v = np.round(x / q) * q
            if self.log:
                v = np.where(v <= 0, q, v)
        hi = self._to_u_vec(v + q / 2)
        lo_x = v - q / 2
        if self.log:
            floor = dim.low if self.kind == "uniform" else 0.0
            lo_x = np.maximum(lo_x, floor)
        lo = np.where(lo_x > 0, self._to_u_vec(np.maximum(lo_x, 1e-300)), 0.0) if self.log else self._to_u_vec(lo_x)
        return self._to_u_vec(v), np.maximum(hi - lo, 1e-12)

    def _to_u_vec(self, x: np.ndarray) -> np.ndarray:
        t = np.log(x) if self.log else x
        if self.kind == "uniform":
            return np.clip((t - self.t_low) / (self.t_high - self.t_low), 0.0, 1.0)
        return np.clip(ndtr((t - self.t_low) / self.t_high), _U_EPS, 1.0 - _U_EPS)

    # -- categorical ----------------------------------------------------------------------------------
    def option_of(self, value: Any) -> int:
        dim = self.dim
        assert isinstance(dim, Categorical)
        if isinstance(value, Mapping):
            name = value.get("_name")
            for i, opt in enumerate(dim.options):
                if isinstance(opt, NestedOption) and opt.name == name:
                    return i
            raise ValueError(f"{dim.name}: no nested option named {name!r}")
        try:
            i = self.option_index.get((type(value), value))
        except TypeError:  # unhashable
            i = None
        if i is not None:
            return i
        for i, opt in enumerate(dim.options):
            if not isinstance(opt, NestedOption) and type(opt) is type(value) and opt == value:
                return i
        raise ValueError(f"{dim.name}: {value!r} is not one of its options")


@dataclass
class Group:
    """One level of the space: its leaves, and the group of each nested option below it."""

    leaves: list[int]
    dims: list[Dimension]
    condition: tuple[int, int] | None                       # (categorical leaf, option) that activates it
    children: dict[tuple[int, int], "Group"] = field(default_factory=dict)
    num: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))   # numeric leaves
    cat: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))   # categorical leaves
    n_opts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))  # options of each in ``cat``


@dataclass
class CompiledSpace:
    space: SearchSpace
    leaves: list[Leaf]
    root: Group
    groups: list[Group]
    all_discrete: bool
    grid_size: int | None        # None when some leaf is continuous (or the grid is astronomically large)

    @property
    def n_leaves(self) -> int:
        return len(self.leaves)

    # -- encode (user dict -> internal row) --------------------------------------------------------
    def encode(self, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values, active mask, bin widths) of one point; raises ValueError if not in the space."""
        x = np.zeros(self.n_leaves)
        a = np.zeros(self.n_leaves, dtype=bool)
        w = np.zeros(self.n_leaves)
        self._encode_group(self.root, params, x, a, w)
        return x, a, w

    def _encode_group(self, group: Group, params: Mapping[str, Any], x: np.ndarray, a: np.ndarray,
                      w: np.ndarray) -> None:
        for li, dim in zip(group.leaves, group.dims):
            if dim.name not in params:
                raise ValueError(f"missing parameter {dim.name!r}")
            value = params[dim.name]
            leaf = self.leaves[li]
            x[li], w[li] = leaf.encode(value)
            a[li] = True
            child = group.children.get((li, int(x[li])))
            if child is not None:
                opt = dim.options[int(x[li])]  # type: ignore[attr-defined]
                consts = dict(opt.constants)
                sub = {k: v for k, v in value.items() if k != "_name" and k not in consts}
                self._encode_group(child, sub, x, a, w)

    # -- decode (internal row -> user dict) ----------------------------------------------------------
    def decode(self, x: np.ndarray) -> dict[str, Any]:
        return self._decode_group(self.root, x)

    def _decode_group(self, group: Group, x: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for li, dim in zip(group.leaves, group.dims):
            leaf = self.leaves[li]
            if leaf.categorical:
                i = int(x[li])
                opt = dim.options[i]  # type: ignore[attr-defined]
                if isinstance(opt, NestedOption):
                    child = group.children.get((li, i))
                    sub = self._decode_group(child, x) if child is not None else {}
                    out[dim.name] = nested_value(opt, sub)
                else:
                    out[dim.name] = opt
            else:
                out[dim.name] = leaf.decode(float(x[li]))
        return out

    # -- identity of a point (duplicate detection in discrete spaces) ----------------------------------
    def key(self, x: np.ndarray, a: np.ndarray) -> bytes:
        """A canonical key: the grid value (or option index) of every active leaf."""
        parts = []
        for leaf in self.leaves:
            if not a[leaf.index]:
                parts.append("-")
            elif leaf.categorical:
                parts.append(str(int(x[leaf.index])))
            else:
                parts.append(repr(leaf.decode(float(x[leaf.index]))))
        return "|".join(parts).encode()

    def iter_grid_rows(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every point of an all-discrete space, encoded."""
        for point in self.space.iter_grid():
            yield self.encode(point)


def compile_space(space: SearchSpace) -> CompiledSpace:
    leaves: list[Leaf] = []
    groups: list[Group] = []

    def build(sub: SearchSpace, condition: tuple[int, int] | None) -> Group:
        group = Group([], [], condition)
        groups.append(group)
        pending_children: list[tuple[int, int, SearchSpace]] = []
        for dim in sub:
            leaf = _make_leaf(len(leaves), dim)
            leaves.append(leaf)
            group.leaves.append(leaf.index)
            group.dims.append(dim)
            if isinstance(dim, Categorical):
                for i, opt in enumerate(dim.options):
                    if isinstance(opt, NestedOption):
                        pending_children.append((leaf.index, i, opt.space))
        for li, i, s in pending_children:
            group.children[(li, i)] = build(s, (li, i))
        group.num = np.array([li for li in group.leaves if not leaves[li].categorical], dtype=np.intp)
        group.cat = np.array([li for li in group.leaves if leaves[li].categorical], dtype=np.intp)
        group.n_opts = np.array([leaves[li].n_options for li in group.cat], dtype=np.intp)
        return group

    root = build(space, None)
    all_discrete = space.is_discrete
    grid_size = None
    if all_discrete:
        try:
            grid_size = space.grid_size()
        except Exception:  # pragma: no cover - defensive
            grid_size = None
    return CompiledSpace(space, leaves, root, groups, all_discrete, grid_size)


def _make_leaf(index: int, dim: Dimension) -> Leaf:
    if isinstance(dim, Categorical):
        lookup: dict[Any, int] = {}
        for i, opt in enumerate(dim.options):
            if isinstance(opt, NestedOption):
                continue
            try:
                lookup.setdefault((type(opt), opt), i)
            except TypeError:
                pass
        return Leaf(index, dim, True, n_options=len(dim.options), option_index=lookup)
    if isinstance(dim, IntRange):
        return Leaf(index, dim, False, discrete=True, kind="int")
    assert isinstance(dim, Numeric), type(dim)
    if dim.distribution == "uniform":
        lo, hi = (math.log(dim.low), math.log(dim.high)) if dim.log else (dim.low, dim.high)
        return Leaf(index, dim, False, discrete=dim.q is not None, kind="uniform", log=dim.log,
                    t_low=lo, t_high=hi)
    return Leaf(index, dim, False, discrete=dim.q is not None, kind="normal", log=dim.log,
                t_low=dim.mu, t_high=dim.sigma)
