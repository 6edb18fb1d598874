"""`np.random.default_rng(seed)` for many seeds at once: the generators start exactly where numpy's would.

Each /elbo request draws its noise from a generator seeded with its own seed, so a seed gives the same numbers
alone or in a batch. `default_rng(seed)` costs about 6 µs, nearly all of it SeedSequence hashing the seed
with numpy calls on four-word arrays; in a batch of one-instance requests that was about half of the
engine's work per request. Here SeedSequence's hashing (numpy/random/bit_generator.pyx) runs once for all the
seeds of a batch, vectorised over them, then PCG64's seeding (pcg64.c, pcg64_set_seed) per seed in Python
integers, and one PCG64 is moved to each state in turn. tests/service/test_seeding.py pins the
states and the draws to numpy's own for seeds of every size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# Below this many seeds, numpy's own default_rng is cheaper than the vectorised path's fixed cost (~55 µs; then
# ~2.5 µs a seed, 8 normals drawn included, against ~6.8 µs: 6.0 / 4.3 / 3.3 µs a seed at 16 / 30 / 64 seeds).
MIN_VECTORISED = 16
# Seeds of up to four 32-bit words fill SeedSequence's pool (pool_size 4) without its extra mixing rounds.
MAX_SEED = 2**128 - 1

_MASK32, _MASK128 = 0xFFFFFFFF, 2**128 - 1
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875  # SeedSequence.mix_entropy's hash
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED  # SeedSequence.generate_state's hash
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715  # SeedSequence's mix
_PCG_MULTIPLIER = (2549297995355413924 << 64) + 4865540595714422341  # PCG_DEFAULT_MULTIPLIER_128


def _multipliers(start: int, factor: int, count: int) -> np.ndarray:
    """The hash constants of `count` successive hashes, (count + 1,) uint32: hash k XORs with entry k and
    multiplies by entry k + 1. They depend on no seed, only on how many hashes came before."""
    values = [start]
    for _ in range(count):
        values.append(values[-1] * factor & _MASK32)
    return np.array(values, dtype=np.uint32)


_A = _multipliers(_INIT_A, _MULT_A, 16)  # mix_entropy's 16 hashes for a pool of 4 and at most 4 entropy words
_B = _multipliers(_INIT_B, _MULT_B, 8)  # generate_state(4, uint64): 8 words


def _hash(values: np.ndarray, consts: np.ndarray, first: int, rows: int = 0) -> np.ndarray:
    """SeedSequence's hashmix of row j of `values` (rows, seeds) with the (first + j)-th hash constant; a single
    row of `values` is hashed with `rows` successive constants."""
    rows = rows or values.shape[0]
    out = (values ^ consts[first : first + rows, None]) * consts[first + 1 : first + rows + 1, None]
    out ^= out >> np.uint32(16)
    return out


def pcg64_states(seeds: Sequence[int]) -> list[tuple[int, int]]:
    """(state, inc) of PCG64 as np.random.default_rng(seed) starts it, for every seed in 0..MAX_SEED."""
    words = np.array([[s & _MASK32, s >> 32 & _MASK32, s >> 64 & _MASK32, s >> 96] for s in seeds], np.uint32).T
    pool = list(_hash(words, _A, 0))  # the 4 pool words, each (n,); a seed's missing words hash as 0s, as numpy pads
    for src in range(4):  # each pool word mixed into the 3 others, in SeedSequence's order
        others = [dst for dst in range(4) if dst != src]
        hashed = _hash(pool[src][None, :], _A[4 + 3 * src : 8 + 3 * src], 0, rows=3)
        mixed = np.uint32(_MIX_L) * np.stack([pool[dst] for dst in others]) - np.uint32(_MIX_R) * hashed
        mixed ^= mixed >> np.uint32(16)
        for dst, row in zip(others, mixed, strict=True):
            pool[dst] = row
    state_words = _hash(np.stack(pool + pool), _B, 0)  # generate_state(4, np.uint64): 8 words from the pool, cycled
    halves = (state_words[0::2] | state_words[1::2].astype(np.uint64) << np.uint64(32)).tolist()  # 4 uint64 words
    states = []
    for seed_hi, seed_lo, inc_hi, inc_lo in zip(*halves, strict=True):
        inc = ((inc_hi << 64 | inc_lo) << 1 | 1) & _MASK128
        start = (inc + (seed_hi << 64 | seed_lo)) & _MASK128  # one step from state 0 gives inc
        states.append(((start * _PCG_MULTIPLIER + inc) & _MASK128, inc))
    return states


def seeded_generators(seeds: Sequence[int]) -> Iterator[np.random.Generator]:
    """For each seed in turn, a generator in the state np.random.default_rng(seed) starts in.

    With many seeds it is one generator, this iterator's own, moved to each seed's state in turn: draw from
    it before taking the next.
    """
    # Python ints only: numpy's small integer types would overflow in the word split (numpy's own path takes them).
    if len(seeds) < MIN_VECTORISED or not all(type(s) is int and 0 <= s <= MAX_SEED for s in seeds):
        yield from (np.random.default_rng(s) for s in seeds)
        return
    generator = np.random.Generator(np.random.PCG64(0))  # ~6 µs, once for all the seeds
    bit_generator = generator.bit_generator
    for state, inc in pcg64_states(seeds):
        bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": state, "inc": inc},
            "has_uint32": 0,
            "uinteger": 0,
        }
        yield generator
