import numpy as np

from index.analogy import three_cos_add_query, three_cos_mul_scores
from runtime.vectors import unit_rows


def test_unit_rows_normalises_and_keeps_zero_rows():
    rows = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]])


def test_three_cos_add_is_the_normalised_offset():
    a, b, c = np.array([1.0, 1.0]), np.array([0.0, 1.0]), np.array([0.0, -1.0])
    np.testing.assert_allclose(three_cos_add_query(a, b, c), [1 / np.sqrt(2), -1 / np.sqrt(2)])


def test_three_cos_mul_matches_the_formula_by_hand():
    # cos to a, b, c of two candidates; shifted to [0, 1] then a*c/(b+eps)
    sim_a, sim_b, sim_c = np.array([1.0, 0.0]), np.array([-1.0, 0.0]), np.array([0.0, 1.0])
    scores = three_cos_mul_scores(sim_a, sim_b, sim_c, epsilon=0.001)
    np.testing.assert_allclose(scores, [1.0 * 0.5 / 0.001, 0.5 * 1.0 / 0.501])
