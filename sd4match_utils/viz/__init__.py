"""Every plot the notebooks draw: on images (:mod:`.images`), charts of PCK tables and training runs
(:mod:`.charts`), reproducible saving (:mod:`.base`); the maths lives in matching, metrics and benchmark.

``plot_*`` functions return the figure, draw into the given ``ax`` / ``axes`` when they take them, and save it with
:func:`save_figure` when ``save`` is a path. Points are ``(x, y)`` pixels of the images resized to
``img_size × img_size`` (SPEC §2); grid cells sit where :func:`~sd4match_utils.matching.pixel_to_grid` puts them.
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
