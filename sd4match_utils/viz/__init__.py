"""Every plot the notebooks draw: feature maps, matches and heat-maps on images (:mod:`.images`), charts of PCK
tables and of the prompt-tuning runs (:mod:`.charts`), and reproducible saving (:mod:`.base`).

Plotting only: the maths lives in :mod:`~sd4match_utils.matching` and :mod:`~sd4match_utils.metrics`, the tables
in :mod:`~sd4match_utils.benchmark`. Every ``plot_*`` function returns the :class:`matplotlib.figure.Figure`, draws
into the given ``ax`` / ``axes`` when it takes them (otherwise it makes its own figure), and writes the figure with
:func:`save_figure` when ``save`` is a path.

Coordinates are ``(x, y)`` pixels of the image resized to ``img_size × img_size`` (the paper's space, SPEC §2):
the functions resize the images they show to that size, so points and heat-maps line up with them.
Feature-grid cells are placed with the align-corners convention of :func:`~sd4match_utils.matching.pixel_to_grid`.
"""

from .base import DPI, save_figure
from .charts import (plot_ablations, plot_category_bars, plot_cpm_state, plot_flags, plot_matchers, plot_overview,
                     plot_pck_grid, plot_prompt_comparison, plot_training)
from .images import (pca_rgb, pca_rgb_joint, plot_best_worst, plot_explorer, plot_matches, plot_pca,
                     plot_prediction_changes, plot_similarity, render_points_png, render_source_png,
                     render_target_png)

__all__ = ["DPI", "pca_rgb", "pca_rgb_joint", "plot_ablations", "plot_best_worst", "plot_category_bars",
           "plot_cpm_state", "plot_explorer", "plot_flags", "plot_matchers", "plot_matches", "plot_overview",
           "plot_pca", "plot_pck_grid", "plot_prediction_changes", "plot_prompt_comparison", "plot_similarity",
           "plot_training", "render_points_png", "render_source_png", "render_target_png", "save_figure"]
