"""One basis of a Niggli-reduced lattice, chosen for many crystals at once (step 3 of :mod:`crysdiff.cells`).

A Niggli-reduced lattice has several bases with the same metric (``L`` and ``-L`` always, up to 48
for a cubic lattice). When the crystal has less symmetry than its lattice they are different inputs
for the network, so the basis whose structure-factor fingerprint is largest is kept: the numbers
``|S(k)|²`` and ``Im S(a) S(b) S(±c)`` of ``S(k) = Σ z exp(2πi k·f) / Σ z``, rounded to 6 decimals and
compared lexicographically, the first of equal largest ones winning (ties are symmetries of the
crystal itself).

The fingerprints of a structure in basis ``M`` (coordinates ``f M⁻¹``) are those of the given
coordinates at the integer waves ``q = M⁻¹ k``, so :func:`choose_bases` evaluates each distinct
``±q`` of a structure once, for a whole task of structures in a few numpy calls. Only the *rounded*
fingerprints decide, and those are the ones of the per-structure formula (:func:`_exact_keys`, the
arithmetic of a2c511c): the two computations differ by less than 1e-14 (measured; 1e-12 is
allowed), so a rounded value can only differ when the unrounded one lies within that margin of a
rounding boundary (``x·10⁶`` next to a half-integer; crystals with ideal coordinates have values
exactly there). Those structures are decided by the per-structure formula, so every structure ends
in the basis the per-structure code chooses, to the bit.
"""

from __future__ import annotations

import numpy as np

from crysdiff.crystal import wrap_frac

__all__ = ["choose_bases"]

_METRIC_TOLERANCE = 1e-4  # two bases share a metric when their Gram matrices agree to this (relative to the largest entry)
_SHORT = np.array([v for v in np.ndindex(3, 3, 3) if v != (1, 1, 1)], dtype=np.float64) - 1  # [26, 3] in {-1, 0, 1}³
_SCALE = 1e6  # fingerprints are compared rounded to 1 / _SCALE
_MARGIN = 1e-12  # allowed |fast - per-structure| fingerprint difference (plus _MARGIN_PER_ATOM per atom)
_MARGIN_PER_ATOM = 4e-15
_CHUNK_TERMS = 1 << 21  # (wave, atom) terms evaluated at once (bounds memory)
_BLOCK_ROWS = 256  # rows of triples evaluated at once (stay in cache)
_CHUNK_CELLS = 256  # structures whose bases are chosen at once (bounds memory)


def _waves_and_triples() -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The reciprocal vectors whose structure factors tell the bases of one lattice apart (one of each
    ``±k`` in {-2..2}³ with at most one ``±2``: ``|S(k)| = |S(-k)|``), and the triples ``(a, b, c)``
    with ``k_a + k_b = ±k_c`` (their products are odd under inversion, where the moduli are not)."""
    waves = [k for k in np.ndindex(5, 5, 5) if max(abs(np.array(k) - 2)) <= 2 and sum(abs(np.array(k) - 2) == 2) <= 1]
    waves = np.array(waves, dtype=np.float64) - 2
    waves = waves[[tuple(k) > tuple(-k) for k in waves]]  # one of each ±k, no zero vector
    index = {tuple(k): i for i, k in enumerate(waves)}
    a, b, c, sign = [], [], [], []
    for i in range(len(waves)):
        for j in range(i + 1, len(waves)):
            total = tuple(waves[i] + waves[j])
            for s, key in ((1, total), (-1, tuple(-np.array(total)))):
                if key in index:
                    a.append(i), b.append(j), c.append(index[key]), sign.append(s)
    return waves, (np.array(a), np.array(b), np.array(c), np.array(sign))


_WAVES, _TRIPLES = _waves_and_triples()  # [K, 3], T triples


def _automorphisms(grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The integer matrices ``M`` (entries in {-1, 0, 1}, which suffices for a Niggli-reduced basis)
    with ``M G Mᵀ = G`` within tolerance, for Gram matrices ``grams [B, 3, 3]``: ``(owner [R],
    matrices [R, 3, 3])``, grouped by structure, each structure's identity first and the others in
    row-major order of their rows' places in ``_SHORT``. Row ``i`` of ``M`` is a lattice vector as long
    as basis vector ``i``, and the angles must match too; the products ``u G vᵀ`` of the 26 short
    vectors are computed once per structure."""
    tolerance = _METRIC_TOLERANCE * np.abs(grams).max(axis=(1, 2))[:, None, None]  # [B, 1, 1]
    products = _SHORT @ grams @ _SHORT.T  # [B, 26, 26]
    norms = np.diagonal(products, axis1=1, axis2=2)  # [B, 26]
    fits = np.abs(norms[:, None, :] - np.diagonal(grams, axis1=1, axis2=2)[:, :, None]) <= tolerance  # [B, 3, 26]
    close = lambda value, i, j: np.abs(value - grams[:, i, j, None, None]) <= tolerance  # noqa: E731
    transposed = products.transpose(0, 2, 1)
    pairs = fits[:, 0, :, None] & fits[:, 1, None, :] & close(products, 0, 1) & close(transposed, 1, 0)  # [B, 26, 26]
    owner, u, v = np.nonzero(pairs)  # row-major: structure, first row, second row
    tol = tolerance[owner, 0]  # [P, 1]
    g = grams[owner]
    third = (fits[owner, 2] & (np.abs(products[owner, u] - g[:, 0, 2, None]) <= tol)
             & (np.abs(products[owner, :, u] - g[:, 2, 0, None]) <= tol)
             & (np.abs(products[owner, v] - g[:, 1, 2, None]) <= tol)
             & (np.abs(products[owner, :, v] - g[:, 2, 1, None]) <= tol))  # [P, 26]
    pair, w = np.nonzero(third)
    owner, rows = owner[pair], np.stack([u[pair], v[pair], w], axis=1)  # [C], [C, 3]
    m = _SHORT.astype(np.int64)[rows]  # [C, 3, 3]
    keep = np.abs(_det(m)) == 1
    owner, m = owner[keep], m[keep]
    identity = np.all(m == np.eye(3, dtype=np.int64), axis=(1, 2))
    order = np.lexsort((np.arange(len(m)), ~identity, owner))  # per structure: the identity, then the rest in order
    return owner[order], m[order]


def _det(m: np.ndarray) -> np.ndarray:
    """Exact determinants of integer matrices ``[C, 3, 3]``."""
    return (m[:, 0, 0] * (m[:, 1, 1] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 1])
            - m[:, 0, 1] * (m[:, 1, 0] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 0])
            + m[:, 0, 2] * (m[:, 1, 0] * m[:, 2, 1] - m[:, 1, 1] * m[:, 2, 0]))


def _inverse(m: np.ndarray) -> np.ndarray:
    """Exact inverses of integer matrices ``[C, 3, 3]`` of determinant ±1 (the adjugate over the determinant)."""
    c = np.empty_like(m)
    for i in range(3):
        for j in range(3):
            r, s = [k for k in range(3) if k != j], [k for k in range(3) if k != i]
            c[:, i, j] = (-1) ** (i + j) * (m[:, r[0], s[0]] * m[:, r[1], s[1]] - m[:, r[0], s[1]] * m[:, r[1], s[0]])
    return c * _det(m)[:, None, None]


def _exact_keys(frac: np.ndarray, z: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """``[A, K + T]`` rounded fingerprints of one crystal in ``A`` bases (basis ``a`` giving coordinates
    ``frac @ inverse[a]``), with the arithmetic of a2c511c: the reference the fast path is held to.

    The bases come in pairs ``M, -M``, and ``-M`` negates every phase, so its structure factors are
    the complex conjugates of ``M``'s, to the bit: only one of each pair is evaluated."""
    first, partner = _pairs(inverse)
    phases = 2j * np.pi * (frac @ inverse[first]) @ _WAVES.T  # [A/2, N, K]
    half = np.einsum("n,ank->ak", z / z.sum(), np.exp(phases))  # [A/2, K]
    factors = np.empty((len(inverse), half.shape[1]), dtype=np.complex128)
    factors[first], factors[partner] = half, np.conj(half)
    a, b, c, sign = _TRIPLES
    third = np.where(sign > 0, np.conj(factors[:, c]), factors[:, c])  # S(-(a+b)) = conj S(a+b)
    triples = factors[:, a] * factors[:, b] * third  # [A, T]
    return np.round(np.concatenate([np.abs(factors) ** 2, np.imag(triples)], axis=1), 6)


def _pairs(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For integer ``[A, 3, 3]`` matrices closed under negation: ``(first, partner)``, the index of
    the first of each pair ``M, -M`` and of its negative."""
    index = {m.tobytes(): i for i, m in enumerate(np.round(matrices).astype(np.int8))}
    first, partner = [], []
    for key, i in index.items():
        j = index[(-np.frombuffer(key, dtype=np.int8)).tobytes()]
        if i < j:
            first.append(i), partner.append(j)
    return np.array(first), np.array(partner)


def _first_largest(rows: list) -> int:
    """Index of the first of the lexicographically largest ``rows``."""
    return max(range(len(rows)), key=rows.__getitem__)


def _structure_factors(owner, inverse, frac, z, atom_start, counts) -> tuple[np.ndarray, np.ndarray]:
    """``(real, imag) [K, R]``: the structure factors ``S(k)`` of every structure in each of its bases.
    ``owner [R]`` / ``inverse [R, 3, 3]`` list the bases, ``frac [N, 3]`` / ``z [N]`` all atoms, structure
    ``b`` being ``atom_start[b]:atom_start[b] + counts[b]``; each distinct ``±q = M⁻¹ k`` of a structure is
    evaluated once."""
    num = len(counts)
    q = np.rint(inverse.astype(np.float64) @ _WAVES.T).astype(np.int64)  # [R, 3, K] q = M⁻¹ k (exact)
    span = int(np.abs(q).max())
    base = 2 * span + 1
    cube = base ** 3
    code = ((q[:, 0] + span) * base + q[:, 1] + span) * base + q[:, 2] + span  # [R, K] in [0, cube)
    negative = cube - 1 - code  # the code of -q
    flip = negative < code  # S(-q) = conj S(q): one of each ±q is evaluated
    code = np.minimum(code, negative) + owner[:, None] * cube  # unique per structure and ±q
    seen = np.zeros(num * cube, dtype=bool)
    seen[code] = True
    unique = np.flatnonzero(seen)  # [U]
    where = (np.cumsum(seen) - 1)[code.T]  # [K, R] index into unique
    u_owner, u_code = np.divmod(unique, cube)
    wave = np.stack([u_code // base ** 2, (u_code // base) % base, u_code % base], axis=1).astype(np.float64) - span  # [U, 3]
    weights = z / np.add.reduceat(z, atom_start)[np.repeat(np.arange(num), counts)]  # [N] z / Σ z per structure
    # exp(2πi q·f) = Π_d exp(2πi q_d f_d): per atom and axis, the powers -span..span of exp(2πi f_d)
    powers = np.exp(2j * np.pi * frac[:, :, None] * np.arange(span + 1))  # [N, 3, span + 1]
    powers = np.concatenate([np.conj(powers[:, :, :0:-1]), powers], axis=2).reshape(-1)  # [N * 3 * base]
    index = (wave + span).astype(np.int64) + np.arange(3) * base  # [U, 3] place within an atom's table
    factors = np.empty(len(unique), dtype=np.complex128)
    terms = counts[u_owner]  # atoms per wave
    done = 0
    while done < len(unique):  # (wave, atom) terms in chunks
        stop = done + max(1, int(np.searchsorted(np.cumsum(terms[done:]), _CHUNK_TERMS)))
        n = terms[done:stop]
        which = np.repeat(np.arange(done, stop), n)
        start = np.cumsum(n) - n
        atom = atom_start[u_owner[which]] + np.arange(len(which)) - np.repeat(start, n)
        at = index[which] + (3 * base) * atom[:, None]  # [E, 3]
        term = powers[at[:, 0]] * powers[at[:, 1]] * powers[at[:, 2]] * weights[atom]
        factors[done:stop] = np.add.reduceat(term, start)
        done = stop
    real = factors.real[where]  # [K, R]
    imag = factors.imag[where]
    imag[flip.T] *= -1
    return real, imag


def _rounded(values: np.ndarray, margin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values [V, R]`` (fingerprints of rows ``R``) rounded to integers in units of 1 / _SCALE, and
    per row whether one of them lies within ``margin [R]`` of a rounding boundary."""
    values = values * _SCALE
    edge = (np.abs(values - np.floor(values) - 0.5) <= margin * _SCALE).any(axis=0)
    return np.rint(values).astype(np.int64), edge


def _triples(real: np.ndarray, imag: np.ndarray) -> np.ndarray:
    """``[T, R]`` ``Im S(a) S(b) S(±c)`` from the structure factors ``real, imag [K, R]``."""
    a, b, c, sign = _TRIPLES
    out = np.empty((len(a), real.shape[1]))
    for lo in range(0, real.shape[1], _BLOCK_ROWS):  # blocks that stay in cache
        part = slice(lo, lo + _BLOCK_ROWS)
        re, im = real[:, part], imag[:, part]
        ar, ai, br, bi = re[a], im[a], re[b], im[b]
        pr, pi = ar * br - ai * bi, ar * bi + ai * br  # S(a) S(b)
        # Im(P conj S(c)) for sign > 0 (k_a + k_b = k_c), Im(P S(c)) otherwise
        out[:, part] = pi * re[c] - sign[:, None] * pr * im[c]
    return out


def _keys(owner, inverse, frac, z, atom_start, counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(best [B], doubtful [B])``: per structure, the row (into ``owner``) of its first largest
    fingerprint, and whether a value that decides it lies next to a rounding boundary.

    The fingerprint starts with the 40 ``|S(k)|²``: rows whose start is not the largest of their
    structure lose whatever follows, so the triples are evaluated only for the rows that tie there."""
    num = len(counts)
    real, imag = _structure_factors(owner, inverse, frac, z, atom_start, counts)
    margin = _MARGIN + _MARGIN_PER_ATOM * counts[owner]  # [R]
    start, edge = _rounded(real * real + imag * imag, margin)  # [K, R]
    order = np.lexsort((*start[::-1], owner))  # by structure, then the start of the fingerprint
    ends = np.cumsum(np.bincount(owner, minlength=num)) - 1
    top = order[ends]  # [B] a row with the largest start
    tied = np.all(start == start[:, top[owner]], axis=0)  # [R]
    rows = np.flatnonzero(tied)
    rest, rest_edge = _rounded(_triples(real[:, rows], imag[:, rows]), margin[rows])  # [T, C]
    edge[rows] |= rest_edge
    doubtful = np.bincount(owner, weights=edge, minlength=num) > 0
    best = np.full(num, -1)
    owners = owner[rows]
    several = np.bincount(owners, minlength=num) > 1
    first = np.concatenate([[True], owners[1:] != owners[:-1]])
    best[owners[first]] = rows[first]
    # structures with several tied rows: the first of the largest rest, compared as bytes (big-endian
    # unsigned integers compare like the integers, lexicographically)
    blob = (rest.T + (1 << 31)).astype(">u4")
    bounds = np.concatenate([np.flatnonzero(first), [len(rows)]])
    for i in np.flatnonzero(several[owners[first]]):
        lo, hi = bounds[i], bounds[i + 1]
        best[owners[lo]] = rows[lo + _first_largest([row.tobytes() for row in blob[lo:hi]])]
    return best, doubtful


def choose_bases(cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For Niggli-reduced cells ``(lattice [3, 3], frac [N, 3], z [N])``: ``(lattice, frac)`` of each in
    the basis with the largest fingerprint (the first of equal largest ones), ``frac`` wrapped into
    ``[0, 1)``. A lattice with no other basis of its metric keeps ``lattice`` and ``frac`` as given."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for lo in range(0, len(cells), _CHUNK_CELLS):
        out.extend(_choose(cells[lo:lo + _CHUNK_CELLS]))
    return out


def _choose(cells):
    out = [(lattice, frac) for lattice, frac, _ in cells]
    if not cells:
        return out
    grams = np.stack([lattice @ lattice.T for lattice, _, _ in cells])  # [B, 3, 3]
    owner, same = _automorphisms(grams)
    inverse = _inverse(same)
    per = np.bincount(owner, minlength=len(cells))
    bounds = np.concatenate([[0], np.cumsum(per)])
    chosen = np.flatnonzero(per > 1)
    if not len(chosen):
        return out
    rows = np.concatenate([np.arange(bounds[b], bounds[b + 1]) for b in chosen])
    counts = np.array([len(cells[b][2]) for b in chosen])
    atom_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    frac = np.concatenate([cells[b][1] for b in chosen])
    z = np.concatenate([cells[b][2] for b in chosen]).astype(np.float64)
    local = np.repeat(np.arange(len(chosen)), per[chosen])
    best, doubtful = _keys(local, inverse[rows], frac, z, atom_start, counts)
    best -= np.concatenate([[0], np.cumsum(per[chosen])[:-1]])  # place among the structure's bases
    same_float, inverse_float = same.astype(np.float64), inverse.astype(np.float64)
    for i, b in enumerate(chosen):
        lattice, cell_frac, cell_z = cells[b]
        lo, hi = bounds[b], bounds[b + 1]
        choice = best[i]
        if doubtful[i]:  # a value next to a rounding boundary: the per-structure arithmetic decides
            choice = _first_largest(_exact_keys(cell_frac, cell_z.astype(np.float64), inverse_float[lo:hi]).tolist())
        out[b] = same_float[lo + choice] @ lattice, wrap_frac(cell_frac @ inverse_float[lo + choice])
    return out
