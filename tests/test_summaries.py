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


def test_as_rows_makes_whole_rows_without_padding_tiles():
    images = np.arange(12, dtype=np.float32).reshape(6, 2, 1, 1) * np.ones((6, 2, 2, 1))
    rows = np.asarray(summaries.as_rows(images, 4))
    assert rows.shape == (2, 3, 2, 2, 1)  # 3, the largest divisor of 6 up to 4.
    np.testing.assert_array_equal(rows.reshape(images.shape), images)  # In order.
    assert summaries.as_rows(images[:5], 4).shape == (5, 1, 2, 2, 1)  # 5 is prime: one column.


def test_column_labels_name_the_columns_in_a_first_row():
    grid = np.zeros((2, 4, 12, 16, 1), np.float32)
    labelled = np.asarray(summaries.with_column_labels(grid, ["in", "out"]))
    assert labelled.shape == (3, 4, 12, 16, 1)
    np.testing.assert_array_equal(labelled[1:], grid)
    first = labelled[0]
    assert all(tile.any() for tile in first) and 0 <= first.min() and first.max() <= 1
    np.testing.assert_array_equal(first[0], first[2])  # "in", "in"
    assert not np.array_equal(first[0], first[1])  # "in" is not "out".


def test_draw_text_stamps_glyphs_one_pixel_apart_and_clips():
    image = np.zeros((8, 12, 3), np.float32)
    summaries.draw_text(image, 1, 2, "71", (1, 1, 1))
    np.testing.assert_array_equal(image[1:6, 2:5, 0] == 1, summaries.GLYPHS[7])
    np.testing.assert_array_equal(image[1:6, 6:9, 0] == 1, summaries.GLYPHS[1])
    assert image.sum() == 3 * (summaries.GLYPHS[7].sum() + summaries.GLYPHS[1].sum())
    edge = np.zeros((4, 4, 3), np.float32)
    summaries.draw_text(edge, 2, 2, "8", (1, 0, 0))  # Mostly outside: only the inside is drawn.
    assert edge[..., 0].sum() == summaries.GLYPHS[8][:2, :2].sum()


def test_draw_detections_draws_what_scores_high_enough():
    images = np.zeros((2, 8, 8, 1), np.float32)
    detections = {
        "boxes": np.array([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]] * 2, np.float32),
        "scores": np.array([[0.9, 0.3], [0.2, 0.1]], np.float32),
        "labels": np.array([[3, 4], [5, 6]]),
        "valid": np.array([[True, True], [True, False]]),
    }
    truth = {"boxes": np.array([[[0.25, 0.25, 0.75, 0.75]]] * 2), "labels": np.array([[1], [-1]])}
    pictures = summaries.draw_detections(images, detections, truth, min_score=0.4, scale=4)
    assert pictures.shape == (2, 32, 32, 3)
    red = np.all(np.isclose(pictures, summaries.DETECTION_COLOR), -1)
    green = np.all(np.isclose(pictures, summaries.GROUND_TRUTH_COLOR), -1)
    # Image 0: the 0.9 box (pixels 0-16) and its label, the ground truth (8-24); not the 0.3 box.
    assert red[0, 0, :17].all() and not red[0, 30].any()
    assert green[0, 8, 9:16].all() and green[0, 8, 17:25].all()  # Red crosses it at 16.
    assert not red[1].any() and not green[1].any()  # Nothing over 0.4; padded truth.
