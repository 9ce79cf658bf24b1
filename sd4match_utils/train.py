"""Learning a prompt (SPEC §3–§5): Single, Class or CPM, with the UNet, VAE, text encoder (and DINOv2) frozen.

Each optimiser step takes a seeded *global batch* of ``batch_size × processes × grad_accum`` pairs, noises each
latent once at the training timestep, reads one up-block with the prompt as conditioning and minimises the
Gaussian-window cross-entropy (gradients reach only the prompt). Under ``accelerate launch`` the prompt's gradient
is averaged across processes, so N processes give the same prompt as one with the same global batch. Every epoch
the prompt is validated (nn-PCK@0.1) and the best kept; one atomic checkpoint holds prompt, optimiser state and
progress, and data order and noise are functions of (seed, epoch, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from .cache import atomic_save_tensors, atomic_write_bytes, atomic_write_json, locked_folder, read_json
from .checks import check_device, check_has_pairs, check_img_size, check_limit, check_positive, check_writable_folder
from .conditioning import CPM_FEATURES, CPM_MODES, ConditionalPrompt, LearnedPrompt, make_conditioning
from .data import DATASETS, DEFAULT_IMG_SIZE, load_dataset
from .dino import DEFAULT_DINO_ID, DinoFeatures
from .evaluate import apply_recommended, predict, resolved_settings
from .features import FeatureExtractor, add_noise, unet_readout
from .loss import batch_loss
from .metrics import pck_records
from .models import ModelNotAvailableError, recommended_for, resolve_precision
from .settings import option, result_fields, shared

PROMPT_TYPES = ("single", "class", "cpm")
LOG_COLUMNS = ["kind", "step", "epoch", "loss", "val_pck", "lr", "pairs_seen", "seconds"]
#: The files of a training run in its folder (a started or finished run holds some of them).
RUN_FILES = ("checkpoint.safetensors", "prompt_best.safetensors", "prompt_last.safetensors", "log.csv",
             "summary.json", "settings.json")
#: Settings that change the learned prompt but may differ when a run is resumed (to train it longer).
RUN_LENGTH = ("epochs", "max_steps")


class RunExistsError(ValueError):
    """The output folder already holds a training run and neither resuming nor overwriting was asked for."""


@dataclass
class TrainSettings:
    """Everything that determines a training run (saved as ``settings.json`` and in every prompt file); each field
    declares its ``sd4match train`` option and whether it changes the learned prompt (see
    :mod:`~sd4match_utils.settings`): those that do, but the run length, must match when a run is resumed."""

    prompt_type: str = option(choices=PROMPT_TYPES)
    dataset: str = option(choices=DATASETS)
    data_root: str = option(type=Path)
    model: str = shared("model", "tiny")
    epochs: int | None = option(None, "passes over the training split (paper: SPair 5, PF-Pascal 90)", one_of="length")
    max_steps: int | None = option(None, "optimiser steps", one_of="length")
    batch_size: int = option(3, "pairs per process per micro-batch (paper: 3)")
    grad_accum: int = option(1, "micro-batches per optimiser step")
    lr: float = option(1e-2, "Adam learning rate (paper: 1e-2)")
    layer: int | None = option(None, "up-block whose features are matched (default: the model's recommended; SD 2-1: "
                                     "1)", choices=[0, 1, 2, 3])
    timestep: int | None = option(None, "training timestep (default: the model's recommended; SD 2-1: 261, the "
                                        "paper's)")
    val_timestep: int | None = option(None, "timestep of the per-epoch validation (default: the model's recommended "
                                            "test one; SD 2-1: 50)")
    precision: str = shared("precision", "fp32")
    device: str = shared("device", "cpu")
    seed: int = shared("seed", 0)
    img_size: int | None = shared("img_size", None)
    n_tokens: int = option(75, "learned prompt length (paper: 75)")
    init: str = option("random", "prompt initialisation", choices=["random", "text", "empty"])
    latent: str = shared("latent", "sample")
    train_split: str = option("trn", "split the prompt is learned on", choices=["trn", "val", "test"])
    val_split: str = option("val", "split of the per-epoch validation", choices=["trn", "val", "test"])
    train_limit: int | None = option(None, "use only the first N training pairs")
    val_limit: int | None = option(None, "validate on the first N validation pairs")
    save_every: int = option(25, "checkpoint every N steps (and every epoch)", result=False)
    # counts: recomputing the activations gives the same step up to rounding, not bit for bit
    gradient_checkpointing: bool = option(False, "trade compute for UNet activation memory")
    # CPM only (SPEC §4): linear-layer learning rate, token counts, ablation modes, DINOv2 (None: "tiny" for the
    # tiny model, else facebook/dinov2-base) and an optional DINOv2 feature cache (results do not depend on it)
    lr_linear: float = option(1e-3, "CPM: learning rate of linear_C / linear_N (paper: 1e-3)")
    n_global: int = option(25, "CPM: global tokens G (paper: 25)")
    n_cond: int = option(50, "CPM: conditional tokens C, G + C <= 75 (paper: 50)")
    cpm_mode: str = option("pair", "CPM: condition on both images (paper) or the source image only", choices=CPM_MODES)
    cpm_features: str = option("patch", "CPM: DINOv2 patch tokens (paper, 'Feat') or their mean ('Head')",
                               choices=CPM_FEATURES)
    dino: str | None = option(None, "CPM: DINOv2 ('tiny', 'mini', hub id or folder; default: the embedded one for "
                                    "--model tiny / mini, else facebook/dinov2-base)")
    dino_cache: str | None = shared("dino_cache", None)

    def __post_init__(self):
        if self.dino is None:
            self.dino = self.model if self.model in ("tiny", "mini") else DEFAULT_DINO_ID

    def check(self) -> None:
        if self.prompt_type not in PROMPT_TYPES:
            raise ValueError(f"prompt_type must be one of {PROMPT_TYPES}, got {self.prompt_type!r}")
        if self.epochs is None and self.max_steps is None:
            raise ValueError("give epochs or max_steps")
        for name in ("batch_size", "grad_accum", "save_every", "epochs", "max_steps"):
            check_positive(name, getattr(self, name), allow_none=name in RUN_LENGTH)
        check_img_size(self.img_size)
        check_limit("train_limit", self.train_limit)
        check_limit("val_limit", self.val_limit)
        check_device(self.device)


def _process_state(device: str):
    """(rank, world size, torch device); uses accelerate's process group when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")
        return state.process_index, state.num_processes, state.device if device != "cpu" else torch.device("cpu")
    return 0, 1, torch.device(device)


def _all_reduce_mean(t: torch.Tensor, world: int) -> None:
    if world > 1:
        torch.distributed.all_reduce(t)
        t /= world


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of the ``n`` training pairs for one epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _pair_noise(seed: int, step: int, slot: int, shape) -> torch.Tensor:
    """``(2, *shape)`` noise for both images of the pair at position ``slot`` of step ``step``'s global batch
    (the same whichever process handles that pair)."""
    digest = hashlib.sha256(f"train-noise:{seed}:{step}:{slot}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn((2, *shape), generator=g)


@contextmanager
def gradient_checkpointing(unet, enabled: bool = True):
    """Recompute the UNet's block activations in the backward pass instead of storing them, within the ``with``.

    diffusers checkpoints a block when its ``gradient_checkpointing`` (and, in some versions, ``training``) flag is
    set: only those blocks' flags are set, so the other modules (dropout) stay in eval mode and the numbers hold."""
    if not enabled:
        yield
        return
    blocks = [m for m in unet.modules() if hasattr(m, "gradient_checkpointing")]
    before = [(m, m.gradient_checkpointing, getattr(m, "_gradient_checkpointing_func", None), m.training)
              for m in blocks]
    unet.enable_gradient_checkpointing()
    for m in blocks:
        m.training = True  # only the flag of the block itself, not its children
    try:
        yield
    finally:
        for m, flag, func, training in before:
            m.gradient_checkpointing, m.training = flag, training
            if func is not None:
                m._gradient_checkpointing_func = func


def make_prompt(settings: TrainSettings, sd, categories: list[str]):
    """A freshly initialised prompt module of ``settings.prompt_type`` (:class:`LearnedPrompt` or, for ``"cpm"``,
    :class:`ConditionalPrompt` with its DINOv2 attached)."""
    if settings.prompt_type == "cpm":
        dino = DinoFeatures(settings.dino, device=sd.device, cache_dir=settings.dino_cache)
        return ConditionalPrompt.initialise(sd, dino, settings.n_global, settings.n_cond, settings.cpm_mode,
                                            settings.cpm_features, settings.lr_linear, settings.seed)
    cats = categories if settings.prompt_type == "class" else None
    return LearnedPrompt.initialise(sd, settings.prompt_type, cats, settings.n_tokens, settings.init, settings.seed)


class Trainer:
    """Runs (or resumes) one training job into ``out_dir``.

    Files: ``settings.json``; ``checkpoint.safetensors`` (prompt, Adam state, progress — one atomic file);
    ``prompt_last.safetensors`` and ``prompt_best.safetensors`` (prompt files, see :class:`LearnedPrompt`);
    ``log.csv`` (columns :data:`LOG_COLUMNS`); ``summary.json``.
    """

    def __init__(self, settings: TrainSettings, out_dir: str | Path, sd=None, progress: bool = True):
        from .models import load_sd  # looked up when called, so that tests can stand in for it

        settings.check()
        self.out = Path(out_dir)
        self.rank, self.world, self.device = _process_state(settings.device)
        # the splits' indexes first: an empty split (or limit 0) fails here, before the model loads
        size0 = settings.img_size or DEFAULT_IMG_SIZE
        splits = (settings.train_split, settings.val_split)
        sets = [load_dataset(settings.dataset, settings.data_root, split, size0) for split in splits]
        self.n_pairs = check_has_pairs(sets[0], settings.train_limit, "training pairs")
        check_has_pairs(sets[1], settings.val_limit, "validation pairs")
        self.global_batch = settings.batch_size * self.world * settings.grad_accum
        self.steps_per_epoch = self.n_pairs // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.n_pairs} training pairs cannot fill one global batch of {self.global_batch} "
                             f"(batch_size × processes × grad_accum)")
        self.sd = sd if sd is not None else load_sd(settings.model, self.device, settings.precision)
        settings = self.s = resolved_settings(settings, self.sd, timestep_key="train_timestep")
        if settings.layer not in range(len(self.sd.unet.up_blocks)):
            raise ValueError(f"layer must be an up-block index 0-{len(self.sd.unet.up_blocks) - 1}, "
                             f"got {settings.layer}")
        self.img_size = settings.img_size or self.sd.native_img_size
        if self.img_size != size0:
            sets = [load_dataset(settings.dataset, settings.data_root, split, self.img_size) for split in splits]
        self.train_set, self.val_set = sets
        self.progress = progress and self.rank == 0
        self.prompt = make_prompt(settings, self.sd, self.train_set.categories).to(self.device)
        self.optimizer = torch.optim.Adam(self.prompt.param_groups(settings.lr))
        use_scaler = settings.precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        extractor = partial(FeatureExtractor, self.sd, layers=(settings.layer,), ensemble=1, latent=settings.latent,
                            img_size=self.img_size, seed=settings.seed)
        self.latents = extractor(timestep=settings.timestep)
        self.val_extractor = extractor(timestep=settings.val_timestep)
        # the shorter of the lengths given
        self.total_steps = min(settings.max_steps or math.inf, (settings.epochs or math.inf) * self.steps_per_epoch)
        self.step, self.best_pck, self.best_step, self.log_rows = 0, -math.inf, 0, []
        self._log_saved, self._log_bytes = 0, 0  # rows of log_rows in log.csv, and that file's length

    def _meta(self) -> dict:
        return {"settings": asdict(self.s), "global_batch": self.global_batch, "processes": self.world,
                "img_size": self.img_size}

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        self._write_log()  # before the checkpoint, which records how much of log.csv belongs to it
        tensors = {f"prompt.{k}": v.detach().float().cpu() for k, v in self.prompt.state_dict().items()}
        for i, st in self.optimizer.state_dict()["state"].items():
            for k, v in st.items():
                tensors[f"adam.{i}.{k}"] = torch.as_tensor(v).detach().float().cpu().reshape(-1) if k == "step" \
                    else v.detach().cpu()
        progress = {"step": self.step, "best_pck": self.best_pck, "best_step": self.best_step,
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    "log_bytes": self._log_bytes}
        atomic_save_tensors(self.out / "checkpoint.safetensors", tensors, {"progress": progress, **self._meta()})
        self.prompt.save(self.out / "prompt_last.safetensors", self.sd, {"step": self.step, **self._meta()})

    def load_checkpoint(self) -> bool:
        path = self.out / "checkpoint.safetensors"
        if not path.is_file():
            return False
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        saved = json.loads(meta["settings"])
        # the settings that change the prompt must match, but the run length: a resumed run may be extended
        differ = {k: (saved.get(k), v) for k, v in result_fields(self.s).items()
                  if k not in RUN_LENGTH and saved.get(k) != v}
        if differ:
            raise ValueError(f"{path}: cannot resume, settings differ (saved, now): {differ}")
        self.prompt.load_state_dict({k[len("prompt."):]: v.to(self.device) for k, v in tensors.items()
                                     if k.startswith("prompt.")})
        state = {}
        for key, v in tensors.items():
            if key.startswith("adam."):
                _, i, name = key.split(".", 2)
                state.setdefault(int(i), {})[name] = v.to(self.device) if name != "step" else v.reshape(())
        if state:
            groups = self.optimizer.state_dict()["param_groups"]
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        progress = json.loads(meta["progress"])
        self.step, self.best_pck, self.best_step = progress["step"], progress["best_pck"], progress["best_step"]
        if progress.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(progress["scaler"])
        self._restore_log(progress.get("log_bytes"))
        return True

    def _restore_log(self, log_bytes: int | None) -> None:
        """Cut ``log.csv`` back to what the checkpoint saw (rows appended after it, a half-written row go) and read
        its rows, so the resumed run continues the file with exactly the rows an uninterrupted run writes next."""
        path = self.out / "log.csv"
        data = path.read_bytes() if path.is_file() else b""
        if log_bytes is not None and len(data) >= log_bytes:
            data = data[:log_bytes]
            if self.rank == 0 and path.stat().st_size > log_bytes:
                os.truncate(path, log_bytes)
        elif data:  # no recorded length (older checkpoint) or a shortened file: keep whole rows up to its step
            lines = data.decode("utf-8").splitlines(keepends=True)
            whole = [line for line in lines if line.endswith("\n") and line.strip()]
            header, rows = whole[:1], whole[1:]
            keep = [line for line, r in zip(rows, csv.DictReader(io.StringIO("".join(header + rows))))
                    if r["step"] and int(r["step"]) <= self.step]
            data = "".join(header + keep).encode("utf-8")
            if self.rank == 0:
                atomic_write_bytes(path, data)
        self.log_rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
        self._log_saved, self._log_bytes = len(self.log_rows), len(data)

    def _write_log(self) -> None:
        """Append the rows not yet in ``log.csv`` (a new log is written whole, with its header); a crash mid-write
        leaves at most a tail beyond the length the last checkpoint recorded, cut off on resume."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS)
        if self._log_bytes == 0:
            w.writeheader()
        w.writerows(self.log_rows[self._log_saved:])
        data = buf.getvalue().encode("utf-8")
        path = self.out / "log.csv"
        if self._log_bytes == 0:  # a new log replaces whatever an earlier, never checkpointed start left
            atomic_write_bytes(path, data)
        elif data:
            with open(path, "r+b") as f:
                f.seek(self._log_bytes)
                f.write(data)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
        self._log_saved, self._log_bytes = len(self.log_rows), self._log_bytes + len(data)

    def _log(self, kind: str, epoch, loss="", val_pck="", seconds=0.0) -> None:
        self.log_rows.append({"kind": kind, "step": self.step, "epoch": epoch, "loss": loss, "val_pck": val_pck,
                              "lr": self.s.lr, "pairs_seen": self.step * self.global_batch, "seconds": seconds})

    def _micro_batch(self, k: int) -> list[tuple[int, int]]:
        """``(dataset index, slot in the global batch)`` of this process's micro-batch ``k`` at the current step."""
        epoch, within = divmod(self.step, self.steps_per_epoch)
        order = epoch_order(self.n_pairs, self.s.seed, epoch)
        start = within * self.global_batch + (k * self.world + self.rank) * self.s.batch_size
        return [(int(order[start + j]), start - within * self.global_batch + j) for j in range(self.s.batch_size)]

    def micro_loss(self, k: int) -> torch.Tensor:
        picks = self._micro_batch(k)
        samples = [self.train_set[i] for i, _ in picks]
        images = [im for s in samples for im in (s.src_image, s.trg_image)]
        z0 = self.latents.latents(images)  # (2B, 4, h, w), each image's VAE latent computed once and kept
        noise = torch.cat([_pair_noise(self.s.seed, self.step, slot, z0.shape[1:]) for _, slot in picks])
        z_t = add_noise(z0, noise.to(z0.device), self.s.timestep, self.sd.alphas_cumprod.to(z0.device))
        cond = self.prompt.condition(self.sd, samples)  # (B, 77, D)
        cond = cond.repeat_interleave(2, dim=0)  # both images of a pair share the pair's prompt
        feats = unet_readout(self.sd.unet, z_t.to(self.sd.dtype), self.s.timestep, cond, (self.s.layer,))[self.s.layer]
        f = feats.unflatten(0, (len(samples), 2))

        def kps(attr):
            return [torch.as_tensor(getattr(s, attr), dtype=torch.float32, device=z0.device) for s in samples]

        return batch_loss(f[:, 0], f[:, 1], kps("src_kps_r"), kps("trg_kps_r"), self.img_size)

    def train_step(self) -> float:
        """One optimiser step over the global batch; returns the mean loss over processes and micro-batches."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        with gradient_checkpointing(self.sd.unet, self.s.gradient_checkpointing):
            for k in range(self.s.grad_accum):
                loss = self.micro_loss(k) / self.s.grad_accum
                self.scaler.scale(loss).backward()
                total += loss.detach()
        for p in self.prompt.parameters():
            if p.grad is not None:
                _all_reduce_mean(p.grad, self.world)
        _all_reduce_mean(total, self.world)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return float(total)

    def run_validation(self) -> float:
        """nn-PCK@0.1 (per image, resized space, percent) of the prompt on the validation split."""
        pck = 0.0
        if self.rank == 0:
            df = predict(self.val_set, self.val_extractor, make_conditioning(self.sd, self.prompt), ["nn"],
                         self.s.layer, self.s.val_limit, progress=False)
            recs = pck_records(df, alphas=(0.1,), spaces=("resized",), img_size=self.img_size, by_category=False)
            pck = next(r["pck"] for r in recs if r["averaging"] == "per_image")
        if self.world > 1:  # only the main process validates; the others take its number
            t = torch.tensor([pck], dtype=torch.float64)
            torch.distributed.broadcast(t, 0)
            pck = float(t)
        return pck

    def fit(self, resume: bool = False) -> dict:
        """Train to ``total_steps`` (resuming from the checkpoint when ``resume``); returns the summary."""
        self.out.mkdir(parents=True, exist_ok=True)
        if not (resume and self.load_checkpoint()):
            if self.rank == 0:
                atomic_write_json(self.out / "settings.json", {**self._meta(), "model": self.sd.identity})
            pck0 = self.run_validation()
            self._log("val", 0, val_pck=pck0)
            self._consider_best(pck0)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.s.prompt_type}",
                   disable=not self.progress, unit="step")
        t0 = time.perf_counter()
        while self.step < self.total_steps:
            loss = self.train_step()
            epoch = round(self.step / self.steps_per_epoch, 4)
            self._log("train", epoch, loss=loss, seconds=round(time.perf_counter() - t0, 3))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                pck = self.run_validation()
                self._log("val", epoch, val_pck=pck, seconds=round(time.perf_counter() - t0, 3))
                self._consider_best(pck)
                self.save_checkpoint()
            elif self.step % self.s.save_every == 0:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        if self.world > 1:
            torch.distributed.barrier()
        return self.summary()

    def _consider_best(self, pck: float) -> None:
        if pck > self.best_pck:
            self.best_pck, self.best_step = pck, self.step
            if self.rank == 0:
                self.prompt.save(self.out / "prompt_best.safetensors", self.sd,
                                 {"step": self.step, "val_nn_pck@0.1": pck, **self._meta()})

    def summary(self) -> dict:
        vals = [r for r in self.log_rows if r["kind"] == "val"]
        losses = [float(r["loss"]) for r in self.log_rows if r["kind"] == "train"]
        s = {"steps": self.step, "total_steps": self.total_steps, "global_batch": self.global_batch,
             "processes": self.world, "val_pck_before": float(vals[0]["val_pck"]) if vals else None,
             "val_pck_last": float(vals[-1]["val_pck"]) if vals else None, "best_val_pck": self.best_pck,
             "best_step": self.best_step, "first_loss": losses[0] if losses else None,
             "last_loss": losses[-1] if losses else None, "model": self.sd.identity, **self._meta()}
        if self.rank == 0:
            atomic_write_json(self.out / "summary.json", s)
        return s


def train(settings: TrainSettings, out_dir, resume: bool = False, sd=None, progress: bool = True,
          overwrite: bool = True) -> dict:
    """Train a Single, Class or CPM prompt; see :class:`Trainer` for the files written.

    The folder is locked for the duration of the run (a second run on it fails at once with
    :class:`~sd4match_utils.cache.FolderLockedError`). Without ``resume``, a folder that already holds a run is
    refused with :class:`RunExistsError` unless ``overwrite``; when overwriting, the old run's files are removed
    before anything else so that old and new never mix."""
    settings.check()
    out = Path(out_dir)
    check_writable_folder(out)
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not resume and not overwrite:
        raise RunExistsError(f"{out} already holds a training run ({', '.join(found)}): pass --resume to continue "
                             f"it or --overwrite to replace it")
    rank = int(os.environ.get("RANK", "0"))
    with locked_folder(out, "train") if rank == 0 else nullcontext():
        if found and not resume and rank == 0:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        return Trainer(settings, out_dir, sd=sd, progress=progress).fit(resume=resume)


# runs named by their settings: a notebook re-run, or two ablations sharing a setting, train once
def run_identity(settings: TrainSettings | dict) -> dict:
    """The settings that define what a run learns: the ``result`` fields, with the model's recommended read-out
    filled in, ``precision="auto"`` resolved and ``data_root`` made absolute. Fields left at their default are
    dropped, so a field added later with a default neither renames old runs nor stops their reuse."""
    s = asdict(settings) if isinstance(settings, TrainSettings) else dict(settings)
    try:
        s = apply_recommended(s, recommended_for(s.get("model", "tiny")), timestep_key="train_timestep")
    except ModelNotAvailableError:
        pass
    if s.get("precision") == "auto":
        s["precision"] = resolve_precision("auto", s.get("device", "cpu"), s.get("model"))
    if s.get("data_root"):
        s["data_root"] = str(Path(s["data_root"]).expanduser().resolve())
    kept = {f.name: f.default for f in fields(TrainSettings) if f.metadata.get("result", True)}
    return {k: v for k, v in s.items() if k in kept and v != kept[k]}


def run_dir(settings: TrainSettings, out_root: str | Path, model_fingerprint: str = "") -> Path:
    """``out_root/<type>_n<tokens>_<init>_lr<lr>_t<timestep>_<steps>_<key>``: readable, and unique per run
    (``key``: 12 hex digits of :func:`run_identity` and the model's weight fingerprint)."""
    ident = run_identity(settings)
    key = hashlib.sha256(json.dumps([ident, model_fingerprint], sort_keys=True, default=str).encode()).hexdigest()
    steps = f"s{settings.max_steps}" if settings.max_steps is not None else f"e{settings.epochs}"
    return Path(out_root) / (f"{settings.prompt_type}_n{settings.n_tokens}_{settings.init}_lr{settings.lr:g}"
                             f"_t{ident.get('timestep', settings.timestep)}_{steps}_{key[:12]}")


def is_finished(folder: str | Path, settings: TrainSettings | None = None) -> bool:
    """Whether ``folder`` holds a completed run (all steps, both prompt files), of ``settings`` when given."""
    summary = read_json(Path(folder) / "summary.json")
    if not summary or summary.get("steps") is None or summary["steps"] < summary.get("total_steps", math.inf):
        return False
    if not all((Path(folder) / f"prompt_{w}.safetensors").is_file() for w in ("best", "last")):
        return False
    return settings is None or run_identity(summary.get("settings", {})) == run_identity(settings)


def train_or_reuse(settings: TrainSettings, out_root: str | Path, sd, progress: bool = False) -> tuple[Path, bool]:
    """Train ``settings`` into :func:`run_dir` unless that run already finished there (an interrupted one is
    resumed). Returns ``(run folder, reused)``."""
    folder = run_dir(settings, out_root, sd.identity.get("fingerprint", ""))
    if is_finished(folder, settings):
        return folder, True
    train(settings, folder, resume=True, sd=sd, progress=progress)
    return folder, False
