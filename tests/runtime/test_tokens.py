import numpy as np

from runtime.tokens import row_lengths, used_length


def test_a_batch_runs_on_its_longest_row_and_each_row_alone_on_its_own():
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(row_lengths(mask), [2, 4, 1, 1])  # a row that attends to nothing still runs one
    assert used_length(mask) == 4 == row_lengths(mask).max()
    assert used_length(mask[2:3]) == 1
