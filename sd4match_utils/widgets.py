"""The quick-start notebook's widgets (notebook 00): :class:`MatchExplorer` (click a source point, see where it
lands on the target under several prompts, via :func:`~sd4match_utils.explore.explore_click`) and
:class:`AnnotatorWidget` (the :class:`~sd4match_utils.data.custom.Annotator` behind clicks on the image).

The explorer works in ``(x, y)`` pixels of the images resized to ``img_size × img_size``, the annotator in pixels of
the original image. Clicks come from :class:`ClickImage`, a tiny ``anywidget`` with inline JavaScript, as fractions
``(u, v)`` of the displayed image; it mirrors its ``state`` into ``data-sd4m-state`` for browser tests.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anywidget
import numpy as np
import torch
import traitlets
from torch import Tensor

from .conditioning import make_conditioning
from .data.custom import IMAGE_SUFFIXES, Annotator
from .data.images import load_rgb
from .explore import ClickResult, explore_click
from .features import FeatureExtractor
from .matching import MATCHERS
from .viz import render_points_png, render_source_png, render_target_png

__all__ = ["Annotator", "AnnotatorWidget", "ClickImage", "MatchExplorer", "fraction_to_pixel", "nearest_keypoint",
           "pair_features"]


def fraction_to_pixel(u: float, v: float, width: int, height: int | None = None) -> tuple[float, float]:
    """A click at fractions ``(u, v)`` of a displayed image → ``(x, y)`` pixels of an image of ``width × height``
    (default square): pixel ``i`` covers ``[i/W, (i+1)/W)``, so ``x = u·W − 0.5``, clamped to ``[0, W − 1]``."""
    height = width if height is None else height
    x = min(max(float(u) * width - 0.5, 0.0), width - 1.0)
    return x, min(max(float(v) * height - 0.5, 0.0), height - 1.0)


def nearest_keypoint(xy, kps, radius: float) -> int | None:
    """Index of the keypoint of ``(N, 2)`` ``kps`` nearest to ``(2,)`` ``xy`` when within ``radius``, else None."""
    if kps is None or len(kps) == 0:
        return None
    d = np.linalg.norm(np.asarray(kps, dtype=np.float64) - np.asarray(xy, dtype=np.float64), axis=1)
    i = int(np.argmin(d))
    return i if d[i] <= radius else None


@torch.no_grad()
def pair_features(sd, sample, prompts: Mapping[str, str], layer: int = 1, timestep: int = 50, ensemble: int = 2,
                  img_size: int | None = None, seed: int = 0, batch_size: int = 8) -> dict[str, tuple[Tensor, Tensor]]:
    """Features ``{label: (src, trg)}`` (float32, CPU) of a pair's two images under each prompt ``{label: "empty" |
    "text" | learned prompt file}`` of a loaded model ``sd``; ``sample`` needs ``src_image``, ``trg_image`` (PIL) and
    ``category``; the rest as in :class:`~sd4match_utils.features.FeatureExtractor`.

    Shape:
        - Output: each value a pair :math:`(C, h, w)`, :math:`(C, h, w)`
    """
    fx = FeatureExtractor(sd, layers=(layer,), timestep=timestep, ensemble=ensemble, img_size=img_size, seed=seed,
                          batch_size=batch_size)
    out = {}
    for label, spec in prompts.items():
        cond = make_conditioning(sd, spec)(sample)
        feats = fx([sample.src_image, sample.trg_image], cond)[layer].cpu()
        out[label] = (feats[0], feats[1])
    return out


_CLICK_ESM = r"""
function render({ model, el }) {
  const img = Object.assign(document.createElement("img"), { className: "sd4m-click-image", draggable: false });
  Object.assign(img.style, { cursor: "crosshair", display: "block", maxWidth: "none" });
  const sync = () => {
    img.src = "data:image/png;base64," + model.get("png");
    img.style.width = model.get("width") + "px";
    img.alt = model.get("alt");
    img.dataset.sd4mState = JSON.stringify(model.get("state"));
  };
  img.addEventListener("click", (event) => {
    const box = img.getBoundingClientRect();
    if (!box.width || !box.height) return;
    const u = Math.min(Math.max((event.clientX - box.left) / box.width, 0), 1);
    const v = Math.min(Math.max((event.clientY - box.top) / box.height, 0), 1);
    const n = (model.get("click")[2] || 0) + 1;
    model.set("click", [u, v, n]);
    model.save_changes();
  });
  const events = ["change:png", "change:width", "change:state"];
  events.forEach((name) => model.on(name, sync));
  sync();
  el.appendChild(img);
  return () => events.forEach((name) => model.off(name, sync));
}
export default { render };
"""


class ClickImage(anywidget.AnyWidget):
    """A PNG that reports clicks: ``click`` becomes ``[u, v, n]``, fractions of the displayed image and a counter
    (so that clicking the same spot twice still fires); ``state`` is mirrored into ``data-sd4m-state`` (JSON)."""

    _esm = _CLICK_ESM
    png = traitlets.Unicode("").tag(sync=True)
    width = traitlets.Int(256).tag(sync=True)
    alt = traitlets.Unicode("").tag(sync=True)
    click = traitlets.List([]).tag(sync=True)
    state = traitlets.Dict({}).tag(sync=True)

    def set_png(self, data: bytes) -> None:
        """Show PNG bytes."""
        self.png = base64.b64encode(data).decode("ascii")

    def on_click(self, callback: Callable[[float, float], None]) -> None:
        """Call ``callback(u, v)`` on every click."""

        def handler(change):
            if isinstance(change["new"], (list, tuple)) and len(change["new"]) >= 2:
                callback(float(change["new"][0]), float(change["new"][1]))

        self.observe(handler, names="click")


def _fmt(xy) -> str:
    return f"({xy[0]:.1f}, {xy[1]:.1f})"


class MatchExplorer:
    """Click on the source image, see the match on the target for every prompt side by side.

    ``explorer.widget`` is the box to display (``display(explorer)`` works too); ``explorer.click(x, y)`` does
    what a click does and returns the results.

    Args:
        features: ``{label: (src, trg)}``, e.g. from :func:`pair_features`, computed at ``img_size``.
        matcher, k: initial matcher and number of candidates (a dropdown and a slider change them).
        display_size: pixels per image panel.
        src_kps, trg_kps: annotated keypoints; a click within ``snap_radius`` (default ``0.05 · img_size``) of a
            source keypoint shows its ground truth on the targets.
        thr: PCK threshold to report errors in units of it.
        start_xy: the first click (default: the first source keypoint, else the image centre).

    Shape:
        - features: each value a pair :math:`(C, h, w)`, :math:`(C, h', w')`; src_kps, trg_kps: :math:`(N, 2)`
    """

    def __init__(self, src_image, trg_image, features: Mapping[str, tuple[Tensor, Tensor]], img_size: int, *,
                 matcher: str = "kernel_softmax", k: int = 5, display_size: int = 256, src_kps=None, trg_kps=None,
                 thr: float | None = None, start_xy=None, snap_radius: float | None = None, title: str = ""):
        import ipywidgets as W

        if not features:
            raise ValueError("MatchExplorer needs features for at least one prompt")
        self.src_image, self.trg_image, self.features = src_image, trg_image, dict(features)
        self.img_size, self.display_size, self.thr = int(img_size), int(display_size), thr
        self.src_kps = None if src_kps is None else np.asarray(src_kps, dtype=np.float64).reshape(-1, 2)
        self.trg_kps = None if trg_kps is None else np.asarray(trg_kps, dtype=np.float64).reshape(-1, 2)
        self.snap_radius = 0.05 * self.img_size if snap_radius is None else float(snap_radius)
        self.n_clicks = 0
        self.matcher_box = W.Dropdown(options=list(MATCHERS), value=matcher, description="matcher",
                                      layout=W.Layout(width="260px"))
        self.k_box = W.IntSlider(value=k, min=1, max=10, description="top-k", layout=W.Layout(width="260px"))
        self.source = ClickImage(width=self.display_size, alt="source image: click a point")
        self.source.on_click(lambda u, v: self.click(*fraction_to_pixel(u, v, self.img_size)))
        self.targets = {label: W.Image(format="png", width=self.display_size, layout=W.Layout(margin="0"))
                        for label in self.features}
        self.table = W.HTML()
        heading = W.HTML(f"<b>{html.escape(title)}</b> " if title else "")

        def panel(label: str, child) -> W.VBox:
            return W.VBox([W.HTML(f"<b>{html.escape(label)}</b>"), child], layout=W.Layout(margin="0 6px 6px 0"))

        panels = [panel("source · click a point", self.source)]
        panels += [panel(f"prompt: {label}", img) for label, img in self.targets.items()]
        legend = W.HTML("<small>yellow dot: your click (source) / ground truth (target) · white ✕: prediction · "
                        "numbered dots: best candidate cells · colours: cosine similarity (red high, blue low)"
                        "</small>")
        self.widget = W.VBox([heading, W.HBox([self.matcher_box, self.k_box]),
                              W.HBox(panels, layout=W.Layout(flex_flow="row wrap")), legend, self.table])
        self.widget.add_class("sd4m-explorer")
        for box in (self.matcher_box, self.k_box):
            box.observe(lambda _: self.click(*self.click_xy), names="value")
        if start_xy is None:
            centre = (self.img_size - 1) / 2
            start_xy = self.src_kps[0] if self.src_kps is not None and len(self.src_kps) else (centre, centre)
        self.click(*start_xy)

    @classmethod
    def from_sample(cls, sample, features, **kwargs) -> "MatchExplorer":
        """An explorer on a :class:`~sd4match_utils.data.PairSample` (its keypoints and threshold included)."""
        kwargs = {"src_kps": sample.src_kps_r, "trg_kps": sample.trg_kps_r, "thr": sample.thr,
                  "title": f"{sample.category}: {sample.src_name} → {sample.trg_name}", **kwargs}
        return cls(sample.src_image, sample.trg_image, features, sample.img_size, **kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def click(self, x: float, y: float) -> dict[str, ClickResult]:
        """Match the source point ``(x, y)`` (``img_size`` pixels, clamped to the image) under every prompt and
        redraw. Returns ``{label: ClickResult}``."""
        top = self.img_size - 1.0
        self.click_xy = (min(max(float(x), 0.0), top), min(max(float(y), 0.0), top))
        self.n_clicks += 1
        self.results = explore_click(self.features, self.click_xy, self.img_size, self.matcher_box.value,
                                     self.k_box.value)
        snapped = nearest_keypoint(self.click_xy, self.src_kps, self.snap_radius)
        self.gt_xy = None if snapped is None or self.trg_kps is None else self.trg_kps[snapped]
        self.source.set_png(render_source_png(self.src_image, self.img_size, self.display_size, self.click_xy,
                                              self.src_kps))
        for label, result in self.results.items():
            self.targets[label].value = render_target_png(self.trg_image, result, self.display_size, self.gt_xy)
        self.table.value = self._table_html(snapped)
        self.source.state = {"click": [round(v, 3) for v in self.click_xy], "n": self.n_clicks,
                             "matcher": self.matcher_box.value,
                             "pred": {label: [round(float(v), 3) for v in r.pred_xy]
                                      for label, r in self.results.items()}}
        return self.results

    def _table_html(self, snapped: int | None) -> str:
        rows = []
        for label, r in self.results.items():
            err = ""
            if self.gt_xy is not None:
                d = float(np.linalg.norm(r.pred_xy - self.gt_xy))
                err = f"{d:.1f} px" + (f" ({d / self.thr:.2f} × thr)" if self.thr else "")
            cands = ", ".join(f"{i}: {_fmt(xy)} {s:.2f}" for i, (xy, s) in enumerate(zip(r.topk_xy, r.topk_score), 1))
            rows.append(f'<tr class="sd4m-pred" data-prompt="{html.escape(label)}" data-x="{r.pred_xy[0]:.3f}" '
                        f'data-y="{r.pred_xy[1]:.3f}"><td>{html.escape(label)}</td><td>{_fmt(r.pred_xy)}</td>'
                        f"<td>{err or '–'}</td><td><small>{cands}</small></td></tr>")
        where = f"click {_fmt(self.click_xy)} in {self.img_size}² pixels"
        if snapped is not None:
            where += f" · nearest annotated keypoint: #{snapped}"
        return (f"<div>{where}</div><table class='sd4m-results'><tr><th>prompt</th><th>prediction</th>"
                f"<th>error vs. ground truth</th><th>top-k candidates (x, y) cosine</th></tr>{''.join(rows)}</table>")


class AnnotatorWidget:
    """Click to place named keypoints on your photos; **Undo** removes the last one, **Save** writes
    ``annotations.json``. ``.widget`` is the box to display (``display(annotator_widget)`` works too).

    After a click the name moves on to the next one not yet placed on this image (those given in ``names``, then
    those already used in the category). ``category``: that of images not annotated yet.
    """

    def __init__(self, annotator: Annotator, names: Sequence[str] = (), category: str = "object",
                 display_size: int = 384):
        import ipywidgets as W

        self.annotator, self.display_size = annotator, int(display_size)
        self.given = [str(n) for n in names]
        images = annotator.images()
        if not images:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {annotator.folder}")
        self.image_box = W.Dropdown(options=images, description="image", layout=W.Layout(width="380px"))
        self.category_box = W.Text(value=annotator.category(images[0]) or category, description="category")
        planned = self.planned()
        self.name_box = W.Combobox(options=planned, value=planned[0] if planned else "", description="keypoint",
                                   ensure_option=False)
        self.canvas = ClickImage(width=self.display_size, alt="click to place the keypoint")
        self.canvas.on_click(lambda u, v: self.click(*fraction_to_pixel(u, v, *self._image.size)))
        undo, save = W.Button(description="Undo last"), W.Button(description="Save", button_style="success")
        undo.on_click(lambda _: self.undo())
        save.on_click(lambda _: self.save())
        self.status = W.HTML()
        self._history: list[tuple[str, str, tuple[float, float] | None]] = []  # (image, name, previous xy)
        self.image_box.observe(lambda _: self._load_image(), names="value")
        self.widget = W.VBox([W.HBox([self.image_box, self.category_box]), W.HBox([self.name_box, undo, save]),
                              self.canvas, self.status])
        self.widget.add_class("sd4m-annotator")
        self._load_image()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    @property
    def image(self) -> str:
        return self.image_box.value

    def planned(self) -> list[str]:
        """The names offered, in order: those given, then those already used in the current category."""
        return list(dict.fromkeys(self.given + self.annotator.names(self.category_box.value.strip() or None)))

    def _load_image(self) -> None:
        self._image = load_rgb(self.annotator.folder / self.image)
        cat = self.annotator.category(self.image)
        if cat:
            self.category_box.value = cat
        self._advance()
        self._redraw(f"{self.image}: {self._image.size[0]}x{self._image.size[1]} px")

    def _advance(self) -> None:
        placed = self.annotator.keypoints(self.image)
        self.name_box.options = planned = self.planned()
        nxt = next((n for n in planned if n not in placed), None)
        if nxt is not None:
            self.name_box.value = nxt

    def _redraw(self, message: str = "") -> None:
        points = self.annotator.keypoints(self.image)
        self.canvas.set_png(render_points_png(self._image, points, self.display_size, self.name_box.value))
        self.canvas.state = {"image": self.image, "points": {n: list(xy) for n, xy in points.items()}}
        self.status.value = html.escape(message)

    def click(self, x: float, y: float) -> None:
        """Place the current keypoint name at ``(x, y)`` original pixels of the current image."""
        name = self.name_box.value.strip()
        try:
            before = self.annotator.keypoints(self.image).get(name)
            self.annotator.add_point(self.image, name, (x, y), self.category_box.value)
        except ValueError as exc:
            self._redraw(f"not placed: {exc}")
            return
        self._history.append((self.image, name, before))
        self._advance()
        self._redraw(f"{name} at ({x:.1f}, {y:.1f}); {len(self.annotator.keypoints(self.image))} point(s) on "
                     f"this image; not saved yet")

    def undo(self) -> None:
        """Undo the last placement (restoring a moved point's previous position)."""
        if not self._history:
            self._redraw("nothing to undo")
            return
        image, name, before = self._history.pop()
        if before is None:
            self.annotator.remove_point(image, name)
        else:
            self.annotator.add_point(image, name, before)
        if image == self.image:
            self.name_box.value = name
        self._redraw(f"undid {name} on {image}")

    def save(self) -> Path:
        path = self.annotator.save()
        self._redraw(f"saved {len(self.annotator.entries)} image(s) to {path}")
        return path

