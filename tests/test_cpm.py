"""CPM (SPEC §4): each step of the conditional branch against a plain re-implementation, initialisation, learning
rates, ablation modes, prompt files, training, evaluation, flipped pairs; and cross-dataset (PF-Pascal → PF-Willow)
evaluation of Single, Class and CPM prompts."""

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from PIL import Image

from sd4match_utils.cli import main
from sd4match_utils.conditioning import (CATEGORY_ALIASES, CPM_KEYS, ConditionalPrompt, LearnedPrompt,
                                         encode_embeddings, load_prompt, resolve_category, write_prompt_file)
from sd4match_utils.data import load_dataset, load_rgb
from sd4match_utils.dino import DinoFeatures
from sd4match_utils.train import Trainer, TrainSettings, train

IMG = 128  # small images keep CPU tests fast; the code path is the one used at 768


@pytest.fixture(scope="module")
def dino():
    return DinoFeatures("tiny")


def _feats(b, c, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 256, c, generator=g), torch.randn(b, 256, c, generator=g)


def _plain_branch(p, fs, ft):
    """Steps 1–5 written out with explicit loops for the max-pool (independent of the module's code)."""
    x = torch.cat([fs, ft], dim=2) if p.mode == "pair" else fs  # 1: (B, 256, 2c), source first
    x = x @ p.linear_C.weight.T + p.linear_C.bias  # 2: (B, 256, D)
    x = (x.transpose(1, 2) @ p.linear_N.weight.T + p.linear_N.bias).transpose(1, 2)  # 3: over patches (B, 256, D)
    n, c = x.shape[1], p.n_cond
    pooled = torch.stack([x[:, (i * n) // c : math.ceil((i + 1) * n / c)].amax(dim=1) for i in range(c)], dim=1)  # 4
    return (pooled + p.positional_embedding) * torch.tanh(p.alpha_cond)  # 5


def _plain_sequence(sd, p, fs, ft):
    """[BOS | global | conditional | EOS | pad] from the text encoder's own tables."""
    emb, tok = sd.text_encoder.embeddings, sd.tokenizer
    n = p.n_global + p.n_cond
    pos = emb.position_embedding.weight
    bos = emb.token_embedding.weight[tok.bos_token_id] + pos[0]
    eos = emb.token_embedding.weight[tok.eos_token_id] + pos[n + 1]
    pad = emb.token_embedding.weight[tok.pad_token_id] + pos[n + 2 :]
    b = fs.shape[0]
    return torch.cat([bos.expand(b, 1, -1), p.global_embeds.expand(b, -1, -1), _plain_branch(p, fs, ft),
                      eos.expand(b, 1, -1), pad.expand(b, -1, -1)], dim=1)


def test_every_step_matches_a_plain_reimplementation(tiny_sd, dino):
    p = ConditionalPrompt.initialise(tiny_sd, dino, seed=1)
    assert p.pair_dependent and sorted(p.state_dict()) == sorted(CPM_KEYS)
    fs, ft = _feats(3, dino.dim, 0)
    x = p.branch_input(fs, ft)
    torch.testing.assert_close(x, torch.cat([fs, ft], dim=2))
    assert x.shape == (3, 256, 2 * dino.dim)
    tokens = p.conditional_tokens(fs, ft)
    assert tokens.shape == (3, 50, tiny_sd.text_dim)
    torch.testing.assert_close(tokens, _plain_branch(p, fs, ft), rtol=1e-5, atol=1e-5)
    rows = p.rows(fs, ft)
    assert rows.shape == (3, 75, tiny_sd.text_dim)
    torch.testing.assert_close(rows[:, :25], p.global_embeds.expand(3, -1, -1))
    cond = p(tiny_sd, fs, ft)
    assert cond.shape == (3, 77, tiny_sd.text_dim)
    with torch.no_grad():
        ref = encode_embeddings(tiny_sd.text_encoder, _plain_sequence(tiny_sd, p, fs, ft))
    torch.testing.assert_close(cond, ref, rtol=1e-5, atol=1e-5)
    # source and target are not interchangeable
    assert not torch.allclose(p.conditional_tokens(ft, fs), tokens)


def test_initialisation_is_seeded_uniform_and_leaves_the_global_rng(tiny_sd, dino):
    state = torch.get_rng_state()
    p = ConditionalPrompt(tiny_sd.text_dim, dino.dim, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for name in ("global_embeds", "positional_embedding", "alpha_cond"):
        t = getattr(p, name)
        assert 0 <= t.min() and t.max() < 1 and t.std() > 0.25  # U[0, 1): std 0.289
    assert p.global_embeds.shape == (1, 25, tiny_sd.text_dim)
    assert p.positional_embedding.shape == p.alpha_cond.shape == (1, 50, tiny_sd.text_dim)
    for lin, fan_in in ((p.linear_C, 2 * dino.dim), (p.linear_N, 256)):  # PyTorch default: U(±1/sqrt(fan_in))
        bound = 1 / math.sqrt(fan_in)
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
    q = ConditionalPrompt(tiny_sd.text_dim, dino.dim, seed=3)
    for k, v in p.state_dict().items():
        assert torch.equal(v, q.state_dict()[k])
    r = ConditionalPrompt(tiny_sd.text_dim, dino.dim, seed=4)
    assert not torch.equal(p.global_embeds, r.global_embeds)


def test_param_groups_have_the_papers_learning_rates(tiny_sd, dino):
    p = ConditionalPrompt.initialise(tiny_sd, dino, lr_linear=1e-3)
    groups = p.param_groups(1e-2)
    assert [g["lr"] for g in groups] == [1e-2, 1e-3]
    assert groups[0]["params"] == [p.global_embeds, p.positional_embedding, p.alpha_cond]
    assert {id(t) for t in groups[1]["params"]} == {id(t) for t in (*p.linear_C.parameters(), *p.linear_N.parameters())}
    assert sum(len(g["params"]) for g in groups) == len(list(p.parameters())) == 7
    assert ConditionalPrompt.initialise(tiny_sd, dino, lr_linear=5e-4).param_groups(1.0)[1]["lr"] == 5e-4
    dino_ids = {id(t) for t in dino.net.parameters()}
    assert not dino_ids & {id(t) for t in p.parameters()}


def test_image_mode_ignores_the_target_and_pooled_features_ignore_layout(tiny_sd, dino):
    fs, ft = _feats(2, dino.dim, 1)
    img = ConditionalPrompt.initialise(tiny_sd, dino, mode="image", seed=2)
    assert img.linear_C.in_features == dino.dim
    torch.testing.assert_close(img.conditional_tokens(fs, ft), img.conditional_tokens(fs, fs * 0))
    torch.testing.assert_close(img.conditional_tokens(fs), _plain_branch(img, fs, None), rtol=1e-5, atol=1e-5)
    pair = ConditionalPrompt.initialise(tiny_sd, dino, seed=2)
    assert not torch.allclose(pair.conditional_tokens(fs, ft), pair.conditional_tokens(fs, fs * 0))
    pooled = ConditionalPrompt.initialise(tiny_sd, dino, features="pooled", seed=2)
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pooled.conditional_tokens(fs, ft), pooled.conditional_tokens(fs[:, perm], ft[:, perm]),
                               rtol=1e-5, atol=1e-5)
    mean = lambda f: f.mean(1, keepdim=True).expand(-1, 256, -1)  # noqa: E731
    torch.testing.assert_close(pooled.conditional_tokens(fs, ft), _plain_branch(pooled, mean(fs), mean(ft)),
                               rtol=1e-5, atol=1e-5)
    assert {k: v.shape for k, v in pooled.state_dict().items()} == {k: v.shape for k, v in pair.state_dict().items()}
    with pytest.raises(ValueError, match="mode"):
        ConditionalPrompt(64, 48, mode="both")
    with pytest.raises(ValueError, match="features"):
        ConditionalPrompt(64, 48, features="cls")


def test_global_and_conditional_lengths_are_configurable(tiny_sd, dino):
    p = ConditionalPrompt.initialise(tiny_sd, dino, n_global=10, n_cond=20, seed=5)
    fs, ft = _feats(2, dino.dim, 2)
    assert p.rows(fs, ft).shape == (2, 30, tiny_sd.text_dim)
    cond = p(tiny_sd, fs, ft)
    assert cond.shape == (2, 77, tiny_sd.text_dim)
    with torch.no_grad():
        ref = encode_embeddings(tiny_sd.text_encoder, _plain_sequence(tiny_sd, p, fs, ft))
    torch.testing.assert_close(cond, ref, rtol=1e-5, atol=1e-5)
    no_global = ConditionalPrompt.initialise(tiny_sd, dino, n_global=0, n_cond=75)
    assert no_global(tiny_sd, fs, ft).shape == (2, 77, tiny_sd.text_dim)
    with pytest.raises(ValueError, match="<= 75"):
        ConditionalPrompt(64, 48, n_global=30, n_cond=50)


def test_gradients_reach_only_the_cpm(tiny_sd, dino, synthetic_roots):
    ds = load_dataset("pfpascal", synthetic_roots["pfpascal"], "trn", IMG)
    p = ConditionalPrompt.initialise(tiny_sd, dino, seed=0)
    cond = p.condition(tiny_sd, [ds[0], ds[1]])
    assert cond.shape == (2, 77, tiny_sd.text_dim)
    cond.square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in p.parameters())
    for m in (dino.net, tiny_sd.text_encoder, tiny_sd.unet):
        assert all(t.grad is None for t in m.parameters())
    with pytest.raises(ValueError, match="image pairs"):
        p.condition(tiny_sd, [SimpleNamespace(category="car")])


def test_flipped_pascal_pairs_condition_on_mirrored_images(tiny_sd, dino, synthetic_roots):
    ds = load_dataset("pfpascal", synthetic_roots["pfpascal"], "trn", IMG)
    i = next(j for j, e in enumerate(ds.entries) if e.flip)
    sample = ds[i]
    p = ConditionalPrompt.initialise(tiny_sd, dino, seed=0)
    with torch.no_grad():
        got = p.condition(tiny_sd, [sample])
        src, trg = load_rgb(sample.src_path), load_rgb(sample.trg_path)
        mirror = lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # noqa: E731
        want = p(tiny_sd, dino([mirror(src)]), dino([mirror(trg)]))
        unflipped = p(tiny_sd, dino([src]), dino([trg]))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, unflipped)


def test_prompt_file_roundtrip_rebuilds_dino_and_checks_shapes(tiny_sd, dino, synthetic_roots, tmp_path):
    p = ConditionalPrompt.initialise(tiny_sd, dino, n_global=5, n_cond=30, mode="pair", features="pooled", seed=9)
    path = p.save(tmp_path / "cpm.safetensors", tiny_sd, {"step": 3})
    q = load_prompt(path, tiny_sd)
    assert isinstance(q, ConditionalPrompt)
    assert (q.n_global, q.n_cond, q.mode, q.features) == (5, 30, "pair", "pooled")
    for k, v in p.state_dict().items():
        assert torch.equal(v, q.state_dict()[k]), k
    sample = load_dataset("pfpascal", synthetic_roots["pfpascal"], "test", IMG)[0]
    with torch.no_grad():
        torch.testing.assert_close(q.condition(tiny_sd, [sample]), p.condition(tiny_sd, [sample]))
    assert q.dino.identity["fingerprint"] == dino.identity["fingerprint"]  # rebuilt from the metadata
    d = q.describe()
    assert d["prompt"] == "cpm" and d["dino"]["model"] == "tiny" and set(d["gate"]) >= {"mean", "min", "max"}
    torch.testing.assert_close(q.gate(), torch.tanh(p.alpha_cond[0]).detach())
    assert q.token_norms()["global"].shape == (5,) and q.token_norms()["positional"].shape == (30,)
    # a tensor of the wrong shape: the message names both shapes
    tensors = {k: v for k, v in p.state_dict().items()}
    tensors["linear_N.weight"] = torch.zeros(10, 10)
    write_prompt_file(tmp_path / "bad.safetensors", tiny_sd, "cpm", tensors, p.file_metadata())
    with pytest.raises(ValueError, match=r"linear_N.weight: expected \(256, 256\), found \(10, 10\)"):
        load_prompt(tmp_path / "bad.safetensors", tiny_sd)
    # a DINOv2 of another width
    other = SimpleNamespace(dim=32, n_patches=256, spec="other", describe=lambda: {})
    with pytest.raises(ValueError, match=r"\(256, 32\).*\(256, 48\)"):
        ConditionalPrompt.load(path, tiny_sd, dino=other)


def test_other_dino_is_refused_by_its_weight_probe(tiny_sd, dino, tmp_path, monkeypatch):
    p = ConditionalPrompt.initialise(tiny_sd, dino, seed=0)
    path = p.save(tmp_path / "cpm.safetensors", tiny_sd)
    explicit = DinoFeatures("tiny", seed=4)
    assert ConditionalPrompt.load(path, tiny_sd, dino=explicit).dino is explicit  # a given object is trusted
    import sd4match_utils.dino as dino_mod

    real = dino_mod.load_dino_model
    monkeypatch.setattr(dino_mod, "load_dino_model", lambda model, seed=0: real(model, seed + 1))
    lazy = ConditionalPrompt.load(path, tiny_sd)  # the DINOv2 is built (and checked) on first use
    with pytest.raises(ValueError, match="learned with DINOv2"):
        lazy.dino
    assert ConditionalPrompt.load(path, tiny_sd, check_model=False).dino is not None


def _cpm_settings(root, **kw):
    base = dict(prompt_type="cpm", dataset="pfpascal", data_root=str(root), max_steps=2, batch_size=1, train_limit=2,
                val_limit=1, img_size=IMG, save_every=1, seed=0, n_global=5, n_cond=10, lr_linear=2e-3)
    return TrainSettings(**{**base, **kw})


def test_cpm_training_moves_only_the_cpm_and_resumes_exactly(tiny_sd, synthetic_roots, tmp_path):
    from safetensors.torch import load_file

    s = _cpm_settings(synthetic_roots["pfpascal"])
    assert s.dino == "tiny"  # follows the SD model
    assert TrainSettings(prompt_type="cpm", dataset="spair", data_root=".", model="some/sd", max_steps=1).dino == \
        "facebook/dinov2-base"
    t = Trainer(s, tmp_path / "straight", sd=tiny_sd, progress=False)
    assert isinstance(t.prompt, ConditionalPrompt) and [g["lr"] for g in t.optimizer.param_groups] == [1e-2, 2e-3]
    before = {k: v.clone() for k, v in t.prompt.state_dict().items()}
    t.fit()
    for k, v in t.prompt.state_dict().items():
        assert not torch.equal(before[k], v), f"{k} did not move"
    for m in (tiny_sd.unet, tiny_sd.vae, tiny_sd.text_encoder, t.prompt.dino.net):
        assert all(not p.requires_grad and p.grad is None for p in m.parameters())
    # interrupted after one step, then resumed: the same checkpoint as the straight run
    train(_cpm_settings(synthetic_roots["pfpascal"], max_steps=1), tmp_path / "resumed", sd=tiny_sd, progress=False)
    train(s, tmp_path / "resumed", resume=True, sd=tiny_sd, progress=False)
    a = load_file(tmp_path / "straight" / "checkpoint.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and {f"prompt.{k}" for k in CPM_KEYS} <= a.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    best = load_prompt(tmp_path / "straight" / "prompt_best.safetensors", tiny_sd)
    assert isinstance(best, ConditionalPrompt) and (best.n_global, best.n_cond) == (5, 10)
    settings = json.loads((tmp_path / "straight" / "settings.json").read_text())["settings"]
    assert settings["prompt_type"] == "cpm" and settings["dino"] == "tiny"


def test_cli_train_cpm_options(synthetic_roots, tmp_path, monkeypatch):
    import sd4match_utils.train as train_mod

    seen = {}
    monkeypatch.setattr(train_mod, "train", lambda settings, out, **kw: seen.setdefault("s", settings) and {
        "steps": 0, "total_steps": 0, "global_batch": 1, "val_pck_before": 0.0, "best_val_pck": 0.0, "best_step": 0})
    rc = main(["train", "--prompt-type", "cpm", "--dataset", "pfpascal", "--data-root", str(synthetic_roots["pfpascal"]),
               "--max-steps", "1", "--dino", "tiny", "--lr-linear", "5e-4", "--n-global", "15", "--n-cond", "60",
               "--cpm-mode", "image", "--cpm-features", "pooled", "--dino-cache", str(tmp_path / "dc"),
               "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 0
    s = seen["s"]
    assert (s.prompt_type, s.dino, s.lr_linear, s.n_global, s.n_cond, s.cpm_mode, s.cpm_features) == \
        ("cpm", "tiny", 5e-4, 15, 60, "image", "pooled")
    assert s.dino_cache == str(tmp_path / "dc")


def _evaluate(root, dataset, prompt, out, *extra):
    return main(["evaluate", "--dataset", dataset, "--data-root", str(root), "--split", "test", "--model", "tiny",
                 "--prompt", str(prompt), "--ensemble", "1", "--img-size", str(IMG), "--limit", "2",
                 "--matcher", "nn", "--out", str(out), "--quiet", *extra])


@pytest.fixture
def reuse_tiny_sd(tiny_sd, monkeypatch):
    """The CLI's ``load_sd("tiny")`` returns the session's model instead of building another one."""
    import sd4match_utils.models as models

    real = models.load_sd

    def load_sd(model="tiny", device="cpu", precision="fp32", seed=0, **options):
        same = model == "tiny" and str(device) == "cpu" and precision in ("fp32", "auto") and seed == 0 and not any(
            options.values())
        return tiny_sd if same else real(model, device, precision, seed, **options)

    monkeypatch.setattr(models, "load_sd", load_sd)


def test_evaluate_cli_with_a_cpm_prompt_file(tiny_sd, dino, synthetic_roots, tmp_path, reuse_tiny_sd):
    path = ConditionalPrompt.initialise(tiny_sd, dino, seed=0).save(tmp_path / "cpm.safetensors", tiny_sd)
    assert _evaluate(synthetic_roots["pfpascal"], "pfpascal", path, tmp_path / "run",
                     "--dino-cache", str(tmp_path / "dc")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["conditioning"]["prompt"] == "cpm" and "gate" in metrics["conditioning"]
    assert metrics["conditioning"]["file"] == str(path)
    assert pd.read_csv(tmp_path / "run" / "predictions.csv").pair_id.nunique() == 2
    assert any((tmp_path / "dc" / "dino").rglob("*.safetensors"))
    # DINOv2 weights that are not here: a clear error, not a crash
    assert _evaluate(synthetic_roots["pfpascal"], "pfpascal", path, tmp_path / "run2",
                     "--dino", str(tmp_path / "no-dinov2")) == 2
    # extract with a CPM needs exactly a pair of images
    ds = load_dataset("pfpascal", synthetic_roots["pfpascal"], "test", IMG)
    e = ds.entries[0]
    assert main(["extract", "--images", str(e.src_path), str(e.trg_path), "--prompt", str(path), "--layers", "1",
                 "--model", "tiny", "--ensemble", "1", "--img-size", str(IMG), "--out", str(tmp_path / "f.safetensors")]) == 0
    assert main(["extract", "--images", str(e.src_path), "--prompt", str(path), "--layers", "1",
                 "--model", "tiny", "--ensemble", "1", "--img-size", str(IMG), "--out", str(tmp_path / "g.safetensors")]) == 2


# ------------------------------------------------------------------------------ cross-dataset: PF-Pascal → PF-Willow
def test_class_prompts_map_willow_subclasses_to_pascal_categories(tiny_sd, synthetic_roots):
    pascal = load_dataset("pfpascal", synthetic_roots["pfpascal"], "trn", IMG).categories
    willow = load_dataset("pfwillow", synthetic_roots["pfwillow"], "test", IMG).categories
    prompt = LearnedPrompt.initialise(tiny_sd, "class", pascal, seed=0)
    expected = {"car": "car", "motorbike": "motorbike", "winebottle": "bottle"}
    for cat in willow:
        word = cat.split("(")[0]
        assert resolve_category(cat, pascal) == expected[word]
        torch.testing.assert_close(prompt.rows([cat]), prompt.rows([expected[word]]))
    assert CATEGORY_ALIASES["duck"] == "bird" and resolve_category("duck(S)", ["bird", "car"]) == "bird"
    with pytest.raises(KeyError, match=r"duck\(S\)"):  # the synthetic PF-Pascal has no bird
        prompt.rows(["duck(S)"])


@pytest.mark.slow
def test_pascal_prompts_evaluate_on_willow(tiny_sd, dino, synthetic_roots, tmp_path, reuse_tiny_sd):
    pascal = load_dataset("pfpascal", synthetic_roots["pfpascal"], "trn", IMG).categories
    files = {
        "single": LearnedPrompt.initialise(tiny_sd, "single", seed=0).save(tmp_path / "single.safetensors", tiny_sd),
        "class": LearnedPrompt.initialise(tiny_sd, "class", pascal, seed=0).save(tmp_path / "class.safetensors", tiny_sd),
        "cpm": ConditionalPrompt.initialise(tiny_sd, dino, seed=0).save(tmp_path / "cpm.safetensors", tiny_sd),
    }
    for kind, path in files.items():
        assert _evaluate(synthetic_roots["pfwillow"], "pfwillow", path, tmp_path / kind) == 0, kind
        df = pd.read_csv(tmp_path / kind / "predictions.csv")
        assert df.pair_id.nunique() == 2 and df.category.str.contains(r"\(").all()
        metrics = json.loads((tmp_path / kind / "metrics.json").read_text())
        assert metrics["conditioning"]["prompt"] == kind
        assert any(r["category"] != "all" for r in metrics["results"])  # per-category numbers for comparisons
