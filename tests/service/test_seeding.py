"""service/core/seeding.py starts every generator exactly where np.random.default_rng(seed) starts."""

from __future__ import annotations

import numpy as np

from service.core.seeding import MAX_SEED, MIN_VECTORISED, pcg64_states, seeded_generators

# Seeds of one to four 32-bit words, at the edges of each, and random ones below 2**63 (the API's range).
EDGES = [0, 1, 2, 2**32 - 1, 2**32, 2**53 - 1, 2**53, 2**63 - 1, 2**64 - 1, 2**64, 2**96 + 7, MAX_SEED]
SEEDS = EDGES + [int(s) for s in np.random.default_rng(0).integers(0, 2**63 - 1, 200)]


def test_the_states_are_numpys():
    want = [np.random.PCG64(seed).state["state"] for seed in SEEDS]
    assert pcg64_states(SEEDS) == [(w["state"], w["inc"]) for w in want]


def test_each_generator_draws_what_default_rng_draws():
    for seed, generator in zip(SEEDS, seeded_generators(SEEDS), strict=True):
        numpy_own = np.random.default_rng(seed)
        for shape in [(3, 1, 8), (3, 5, 8)]:  # two draws in turn, as the engine takes the ELBO's then L_K's
            assert np.array_equal(
                generator.standard_normal(shape, dtype=np.float32), numpy_own.standard_normal(shape, dtype=np.float32)
            )
        assert np.array_equal(generator.random(5), numpy_own.random(5))  # a float64 draw after float32 ones


def test_few_seeds_and_seeds_past_four_words_take_numpys_own_generators():
    few = list(range(MIN_VECTORISED - 1))
    assert [g.bit_generator.state for g in seeded_generators(few)] == [
        np.random.default_rng(s).bit_generator.state for s in few
    ]
    large = [*range(MIN_VECTORISED), MAX_SEED + 1]
    draws = [g.standard_normal(4) for g in seeded_generators(large)]
    assert all(
        np.array_equal(d, np.random.default_rng(s).standard_normal(4)) for s, d in zip(large, draws, strict=True)
    )


def test_two_batches_seeded_at_once_in_one_thread_keep_their_own_streams():
    first, second = SEEDS[:20], SEEDS[20:40]
    for a, b, ga, gb in zip(first, second, seeded_generators(first), seeded_generators(second), strict=True):
        got_a, got_b = ga.standard_normal(6), gb.standard_normal(6)
        assert np.array_equal(got_a, np.random.default_rng(a).standard_normal(6))
        assert np.array_equal(got_b, np.random.default_rng(b).standard_normal(6))


def test_seeds_of_numpys_integer_types_take_numpys_own_generators():
    seeds = [np.int32(7), np.uint8(200), np.int64(2**40), *range(MIN_VECTORISED)]
    draws = [g.standard_normal(3) for g in seeded_generators(seeds)]
    assert all(
        np.array_equal(d, np.random.default_rng(s).standard_normal(3)) for s, d in zip(seeds, draws, strict=True)
    )


def test_one_call_draws_what_two_calls_draw():
    """What the engine's one-instance noise relies on: L + K rows in one call are the L rows, then the K rows, of
    two calls; the generator keeps any half-used 64-bit word between calls. Odd sizes included."""
    for seed in range(50):
        for d, draws in [(1, 1), (3, 2), (5, 3), (7, 5)]:
            one = np.random.default_rng(seed).standard_normal((1, draws + 3, d), dtype=np.float32)
            rng = np.random.default_rng(seed)
            two = [rng.standard_normal((1, k, d), dtype=np.float32) for k in (draws, 3)]
            assert np.array_equal(one, np.concatenate(two, axis=1))
