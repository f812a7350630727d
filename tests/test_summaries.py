import numpy as np

from jvision import summaries


def test_draw_rectangles_outlines_exactly_the_box():
    images = np.zeros((1, 6, 7, 3), np.float32)
    out = np.asarray(summaries.draw_rectangles(images, np.array([[1.0, 2.0, 4.0, 5.0]]), (1, 0, 0)))
    expected = np.zeros((6, 7), bool)
    expected[1, 2:6] = expected[4, 2:6] = True
    expected[1:5, 2] = expected[1:5, 5] = True
    np.testing.assert_array_equal(out[0, :, :, 0] == 1, expected)
    assert out[0, :, :, 1:].sum() == 0


def test_edges_outside_the_image_are_not_drawn():
    images = np.zeros((1, 5, 5, 3), np.float32)
    out = np.asarray(
        summaries.draw_rectangles(images, np.array([[-3.0, 1.0, 2.0, 9.0]]), (0, 1, 0))
    )
    drawn = out[0, :, :, 1] == 1
    assert drawn[2, 1:].all() and drawn[:3, 1].all() and drawn.sum() == 4 + 3 - 1


def test_image_grid_layout():
    grid = np.zeros((2, 3, 4, 5, 1), np.float32)
    grid[1, 2] = 1.0
    picture = summaries.image_grid(grid)
    assert picture.shape == (1, 2 * 5 + 1, 3 * 6 + 1, 1) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[0, 6:10, 13:18, 0], 255)
    assert picture[0, 0, 0, 0] == 128  # Gray separators.


def test_as_rows_pads_the_last_row():
    rows = np.asarray(summaries.as_rows(np.ones((5, 2, 2, 1), np.float32), 3))
    assert rows.shape == (2, 3, 2, 2, 1)
    assert rows[1, 2].sum() == 0 and rows[1, 1].sum() == 4


def test_draw_digit_stamps_the_glyph():
    images = np.zeros((2, 8, 8, 3), np.float32)
    out = np.asarray(
        summaries.draw_digit(
            images, np.array([1, 0]), np.array([2, 0]), np.array([7, -1]), (1, 1, 1)
        )
    )
    np.testing.assert_array_equal(out[0, 1:6, 2:5, 0] == 1, summaries.GLYPHS[7])
    assert out[0].sum() == 3 * summaries.GLYPHS[7].sum() and out[1].sum() == 0
