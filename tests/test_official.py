"""Importing the paper's ``ckpt.pt`` (CPM) and ``caption.pt`` (Single / Class): files with the official key names
and shapes (at the tiny model's widths) give exactly the conditioning computed directly from their raw tensors;
bad keys, bad shapes and pickled objects are refused with messages naming the file."""

import os

import pytest
import torch
import torch.nn.functional as F

from sd4match_utils.cli import main
from sd4match_utils.conditioning import (CPM_KEYS, ConditionalPrompt, LearnedPrompt, encode_embeddings, frame_rows,
                                         import_official, load_official, load_prompt)
from sd4match_utils.data import load_dataset
from sd4match_utils.dino import DinoFeatures


@pytest.fixture(scope="module")
def dino():
    return DinoFeatures("tiny")


def _official_state(d, c, g=25, n=50, seed=0):
    """A state dict exactly as the official code saves it (key names and shapes)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    return {"global_embeds": r(1, g, d), "positional_embedding": r(1, n, d), "alpha_cond": r(1, n, d) * 2 - 1,
            "linear_C.weight": r(d, 2 * c) - 0.5, "linear_C.bias": r(d) - 0.5, "linear_N.weight": r(256, 256) - 0.5,
            "linear_N.bias": r(256) - 0.5}


def _direct(sd, state, fs, ft):
    """The official conditioning from the raw tensors, written without the package's CPM module."""
    x = F.linear(torch.cat([fs, ft], dim=2), state["linear_C.weight"], state["linear_C.bias"])
    x = F.linear(x.transpose(1, 2), state["linear_N.weight"], state["linear_N.bias"])
    x = F.adaptive_max_pool1d(x, state["positional_embedding"].shape[1]).transpose(1, 2)
    cond = (x + state["positional_embedding"]) * torch.tanh(state["alpha_cond"])
    bos, eos, _ = frame_rows(sd, 75)
    b = fs.shape[0]
    seq = torch.cat([bos.expand(b, 1, -1), state["global_embeds"].expand(b, -1, -1), cond, eos.expand(b, 1, -1)], 1)
    return encode_embeddings(sd.text_encoder, seq)


def test_cpm_checkpoint_import_gives_identical_conditioning(tiny_sd, dino, synthetic_roots, tmp_path):
    state = _official_state(tiny_sd.text_dim, dino.dim)
    torch.save(state, tmp_path / "ckpt.pt")
    rc = main(["import-official", "--kind", "cpm", "--file", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "imp"),
               "--model", "tiny", "--dino", "tiny"])
    assert rc == 0
    prompt = load_prompt(tmp_path / "imp" / "prompt.safetensors", tiny_sd)
    assert isinstance(prompt, ConditionalPrompt) and (prompt.n_global, prompt.n_cond, prompt.mode) == (25, 50, "pair")
    assert prompt.metadata["source"] == "official" and len(prompt.metadata["official_sha256"]) == 64
    for k in CPM_KEYS:
        assert torch.equal(prompt.state_dict()[k], state[k]), k
    samples = [load_dataset("pfpascal", synthetic_roots["pfpascal"], "test", 128)[i] for i in (0, 1)]
    with torch.no_grad():
        got = prompt.condition(tiny_sd, samples)
        fs, ft = dino([s.src_image for s in samples]), dino([s.trg_image for s in samples])
        want = _direct(tiny_sd, state, fs, ft)
    assert got.shape == (2, 77, tiny_sd.text_dim)
    assert torch.equal(got, want)  # the same operations on the same tensors: bit-identical


def test_ddp_prefix_and_smaller_token_counts(tiny_sd, dino, tmp_path):
    state = {f"module.{k}": v for k, v in _official_state(tiny_sd.text_dim, dino.dim, g=5, n=20).items()}
    torch.save(state, tmp_path / "ckpt.pt")
    path = import_official("cpm", tmp_path / "ckpt.pt", tmp_path / "out", tiny_sd, dino="tiny")
    p = load_prompt(path, tiny_sd)
    assert (p.n_global, p.n_cond) == (5, 20)


def test_caption_import_single_and_class(tiny_sd, tmp_path):
    bos, eos, _ = frame_rows(tiny_sd, 75)
    g = torch.Generator().manual_seed(0)
    seq = lambda: torch.cat([bos, torch.randn(75, tiny_sd.text_dim, generator=g), eos])[None]  # noqa: E731
    single = {"dataset": seq()}
    torch.save(single, tmp_path / "single.pt")
    assert main(["import-official", "--kind", "caption", "--file", str(tmp_path / "single.pt"),
                 "--out", str(tmp_path / "s"), "--model", "tiny"]) == 0
    p = load_prompt(tmp_path / "s" / "prompt.safetensors", tiny_sd)
    assert isinstance(p, LearnedPrompt) and p.kind == "single"
    with torch.no_grad():
        torch.testing.assert_close(p(tiny_sd, ["anything"]), encode_embeddings(tiny_sd.text_encoder, single["dataset"]),
                                   rtol=0, atol=0)
    per_class = {"car": seq(), "bottle": seq(), "motorbike": seq()}
    torch.save(per_class, tmp_path / "class.pt")
    p = load_prompt(import_official("caption", tmp_path / "class.pt", tmp_path / "c", tiny_sd), tiny_sd)
    assert p.kind == "class" and p.categories == ["bottle", "car", "motorbike"]
    with torch.no_grad():
        for cat in ("car", "bottle", "car(G)", "winebottle(M)"):
            key = {"car(G)": "car", "winebottle(M)": "bottle"}.get(cat, cat)
            torch.testing.assert_close(p(tiny_sd, [cat]), encode_embeddings(tiny_sd.text_encoder, per_class[key]),
                                       rtol=0, atol=0)


def test_caption_checks(tiny_sd, tmp_path):
    bos, eos, _ = frame_rows(tiny_sd, 75)
    good = torch.cat([bos, torch.zeros(75, tiny_sd.text_dim), eos])[None]
    torch.save({"dataset": good[:, :, :32]}, tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match=r"narrow.pt.*expected \(1, 77, 64\), found \(1, 77, 32\)"):
        import_official("caption", tmp_path / "narrow.pt", tmp_path / "o", tiny_sd)
    wrong_bos = good.clone()
    wrong_bos[0, 0] += 1
    torch.save({"dataset": wrong_bos}, tmp_path / "bos.pt")
    with pytest.raises(ValueError, match="BOS row"):
        import_official("caption", tmp_path / "bos.pt", tmp_path / "o", tiny_sd)
    assert import_official("caption", tmp_path / "bos.pt", tmp_path / "o", tiny_sd, check_model=False).is_file()
    torch.save({"dataset": good, "car": good}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="Single.*Class"):
        import_official("caption", tmp_path / "mixed.pt", tmp_path / "o", tiny_sd)


def test_bad_keys_are_named(tiny_sd, dino, tmp_path, capsys):
    state = _official_state(tiny_sd.text_dim, dino.dim)
    del state["alpha_cond"]
    state["prompt_embeds"] = torch.zeros(1)
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(ValueError, match=r"keys.pt.*missing keys \['alpha_cond'\], unexpected keys \['prompt_embeds'\]"):
        import_official("cpm", tmp_path / "keys.pt", tmp_path / "o", tiny_sd, dino="tiny")
    rc = main(["import-official", "--kind", "cpm", "--file", str(tmp_path / "keys.pt"), "--out", str(tmp_path / "o"),
               "--model", "tiny", "--dino", "tiny"])
    assert rc == 2 and "missing keys ['alpha_cond']" in capsys.readouterr().err
    assert not (tmp_path / "o" / "prompt.safetensors").exists()


def test_bad_shapes_are_named(tiny_sd, dino, tmp_path):
    state = _official_state(tiny_sd.text_dim, dino.dim)
    state["linear_N.weight"] = torch.zeros(128, 128)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"shape.pt.*linear_N.weight: expected \(256, 256\), found \(128, 128\)"):
        import_official("cpm", tmp_path / "shape.pt", tmp_path / "o", tiny_sd, dino="tiny")
    # the real SD 2-1 / DINOv2-base widths do not fit the tiny model: both shapes named
    torch.save(_official_state(1024, 768, seed=1), tmp_path / "sd21.pt")
    with pytest.raises(ValueError, match=r"global_embeds: expected \(1, 25, 64\), found \(1, 25, 1024\)"):
        import_official("cpm", tmp_path / "sd21.pt", tmp_path / "o", tiny_sd, dino="tiny")
    # ... and the real widths are what facebook/dinov2-base implies (checked without its weights)
    with pytest.raises(ValueError, match=r"linear_C.weight: expected \(64, 1536\), found \(64, 96\)"):
        import_official("cpm", tmp_path / "shape.pt", tmp_path / "o", tiny_sd, dino="facebook/dinov2-base")


class _Payload:
    """Unpickling this would create a folder: proof that a file's objects are never executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_pickled_objects_are_refused_weights_only(tiny_sd, tmp_path, monkeypatch):
    marker = tmp_path / "was_executed"
    torch.save({"dataset": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil.pt: refused.*weights_only=True"):
        load_official(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused"):
        import_official("caption", tmp_path / "evil.pt", tmp_path / "o", tiny_sd)
    assert not marker.exists()
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    torch.save({"x": torch.zeros(1)}, tmp_path / "ok.pt")
    load_official(tmp_path / "ok.pt")
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable torch checkpoint"):
        load_official(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_official(tmp_path / "missing.pt")


def _no_model_loading(monkeypatch):
    """Make any attempt to load Stable Diffusion fail loudly (importing must not need the 5 GB model)."""
    import sd4match_utils.models as models

    def refuse(*args, **kwargs):
        raise AssertionError(f"load_sd{args} was called")

    monkeypatch.setattr(models, "load_sd", refuse)


def test_caption_import_without_model(tiny_sd, tmp_path, monkeypatch, capsys):
    import json

    from safetensors import safe_open

    from sd4match_utils.conditioning import UNKNOWN_MODEL

    bos, eos, _ = frame_rows(tiny_sd, 75)
    g = torch.Generator().manual_seed(1)
    per_class = {c: torch.cat([bos, torch.randn(75, tiny_sd.text_dim, generator=g), eos])[None]
                 for c in ("car", "bottle")}
    torch.save(per_class, tmp_path / "caption.pt")
    _no_model_loading(monkeypatch)
    assert main(["import-official", "--kind", "caption", "--file", str(tmp_path / "caption.pt"),
                 "--out", str(tmp_path / "c")]) == 0
    assert "not checked" in capsys.readouterr().out
    path = tmp_path / "c" / "prompt.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["kind"] == "class" and int(meta["text_dim"]) == tiny_sd.text_dim  # the width read from the file
    assert json.loads(meta["model"]) == {"model": UNKNOWN_MODEL} and "model_probe" not in meta
    assert len(meta["official_sha256"]) == 64 and json.loads(meta["categories"]) == ["bottle", "car"]
    # the right width loads (warning that the model could not be checked) and gives the official conditioning
    with pytest.warns(UserWarning, match="could not be checked"):
        p = load_prompt(path, tiny_sd)
    with torch.no_grad():
        torch.testing.assert_close(p(tiny_sd, ["car"]), encode_embeddings(tiny_sd.text_encoder, per_class["car"]),
                                   rtol=0, atol=0)


def test_caption_import_without_model_keeps_the_file_width(tiny_sd, tmp_path, monkeypatch):
    import json

    from safetensors import safe_open

    _no_model_loading(monkeypatch)
    torch.save({"dataset": torch.randn(1, 77, 1024)}, tmp_path / "sd21.pt")  # SD 2-1's width, no SD 2-1 needed
    assert main(["import-official", "--kind", "caption", "--file", str(tmp_path / "sd21.pt"),
                 "--out", str(tmp_path / "w")]) == 0
    path = tmp_path / "w" / "prompt.safetensors"
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["text_dim"]) == 1024 and tuple(f.get_tensor("embeddings").shape) == (1, 75, 1024)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"\(1, 75, 1024\).*64-d"):
        load_prompt(path, tiny_sd)  # a wrong width still fails
    torch.save({"car": torch.randn(1, 77, 32), "bus": torch.randn(1, 77, 48)}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match=r"mixed.pt.*wrong shape"):
        import_official("caption", tmp_path / "mixed.pt", tmp_path / "m")
    torch.save({"dataset": torch.randn(1, 76, 32)}, tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"short.pt.*expected \(1, 77, 32\), found \(1, 76, 32\)"):
        import_official("caption", tmp_path / "short.pt", tmp_path / "m")


def test_cpm_import_without_model(tiny_sd, dino, tmp_path, monkeypatch):
    state = _official_state(tiny_sd.text_dim, dino.dim, g=5, n=20)
    torch.save(state, tmp_path / "ckpt.pt")
    _no_model_loading(monkeypatch)
    assert main(["import-official", "--kind", "cpm", "--file", str(tmp_path / "ckpt.pt"), "--out",
                 str(tmp_path / "imp"), "--dino", "tiny"]) == 0
    with pytest.warns(UserWarning, match="could not be checked"):
        prompt = load_prompt(tmp_path / "imp" / "prompt.safetensors", tiny_sd)
    assert isinstance(prompt, ConditionalPrompt) and (prompt.n_global, prompt.n_cond) == (5, 20)
    for k in CPM_KEYS:
        assert torch.equal(prompt.state_dict()[k], state[k]), k
