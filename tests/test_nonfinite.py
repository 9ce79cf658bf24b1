"""NaN / Inf never become results: prompt files (learned, CPM, official) holding them are refused at load with the
file and the tensor key named; a feature map that is not finite is an error naming the image, never a prediction;
the command line turns both into a one-line error with exit code 2 and writes nothing."""

import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sd4match_utils.cli import main
from sd4match_utils.conditioning import ConditionalPrompt, LearnedPrompt, frame_rows, import_official, load_prompt
from sd4match_utils.features import FeatureExtractor, NonFiniteFeaturesError


def _image(seed=0, size=(80, 72)):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size[1], size[0], 3, generator=g) * 255).byte().numpy())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_learned_prompt_file_with_non_finite_values_is_refused(tiny_sd, tmp_path, bad):
    emb = torch.randn(1, 75, tiny_sd.text_dim)
    emb[0, 3, 5] = bad
    path = LearnedPrompt("single", emb).save(tmp_path / "p.safetensors", tiny_sd)
    for load in (lambda: load_prompt(path, tiny_sd), lambda: LearnedPrompt.load(path, tiny_sd, check_model=False)):
        with pytest.raises(ValueError, match=r"p\.safetensors: non-finite values in tensor 'embeddings'"):
            load()


def test_cpm_prompt_file_with_inf_is_refused(tiny_sd, tmp_path):
    prompt = ConditionalPrompt(tiny_sd.text_dim, 48, n_global=5, n_cond=20)
    prompt.dino_info = {"spec": "tiny", "model": "tiny", "dim": 48, "n_patches": 256}
    path = prompt.save(tmp_path / "ok.safetensors", tiny_sd)
    assert isinstance(load_prompt(path, tiny_sd), ConditionalPrompt)  # the same file, finite, loads
    with torch.no_grad():
        prompt.alpha_cond[0, 1, 2] = math.inf
    path = prompt.save(tmp_path / "cpm.safetensors", tiny_sd)
    with pytest.raises(ValueError, match=r"cpm\.safetensors: non-finite values in tensor 'alpha_cond' \(0 NaN, 1 Inf"):
        load_prompt(path, tiny_sd)


def test_official_files_with_nan_are_refused(tiny_sd, tmp_path, capsys):
    bos, eos, _ = frame_rows(tiny_sd, 75)
    seq = torch.cat([bos, torch.randn(75, tiny_sd.text_dim), eos])[None]
    bad = seq.clone()
    bad[0, 10, 0] = math.nan
    torch.save({"car": seq, "bottle": bad}, tmp_path / "caption.pt")
    with pytest.raises(ValueError, match=r"caption\.pt: non-finite values in tensor 'bottle' \(1 NaN"):
        import_official("caption", tmp_path / "caption.pt", tmp_path / "o", tiny_sd)
    rc = main(["import-official", "--kind", "caption", "--file", str(tmp_path / "caption.pt"),
               "--out", str(tmp_path / "o"), "--model", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and "'bottle'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "prompt.safetensors").exists()


def test_non_finite_features_name_the_image_and_are_not_cached(tiny_sd, tmp_path):
    cond = torch.zeros(1, 77, tiny_sd.text_dim)
    cond[0, 4, 0] = math.nan
    fx = FeatureExtractor(tiny_sd, layers=(1, 2), ensemble=1, img_size=128, cache_dir=tmp_path / "cache")
    with pytest.raises(NonFiniteFeaturesError, match=r"up-block 1 for image b\.png \(and 1 more image"):
        fx([_image(0), _image(1)], cond, names=["b.png", "c.png"])
    assert not list((tmp_path / "cache").glob("features/*/*")), "non-finite features must not enter the cache"
    with pytest.raises(NonFiniteFeaturesError, match="content key"):  # without names: the content key
        fx([_image(2)], cond)
    finite = fx([_image(0)], torch.zeros(1, 77, tiny_sd.text_dim), names=["b.png"])
    assert all(torch.isfinite(v).all() for v in finite.values())


def test_a_cached_non_finite_map_is_not_served(tiny_sd, tmp_path):
    cond = torch.zeros(1, 77, tiny_sd.text_dim)
    fx = FeatureExtractor(tiny_sd, layers=(1,), ensemble=1, img_size=128, cache_dir=tmp_path / "cache")
    fx([_image(0)], cond)
    (entry,) = (tmp_path / "cache").glob("features/*/*.safetensors")
    tensors = load_file(entry)
    tensors["up1"][0, 0, 0] = math.nan  # a cache written before this check, or by a broken model
    save_file(tensors, str(entry))
    again = FeatureExtractor(tiny_sd, layers=(1,), ensemble=1, img_size=128, cache_dir=tmp_path / "cache")
    with pytest.raises(NonFiniteFeaturesError, match="a.png"):
        again([_image(0)], cond, names=["a.png"])


@pytest.fixture(scope="module")
def nan_model(tiny_sd, tmp_path_factory):
    """The tiny model saved as a folder whose UNet input convolution holds a NaN."""
    folder = tiny_sd.save_pretrained(tmp_path_factory.mktemp("nan") / "nan-model")
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
    tensors = load_file(f)
    tensors["conv_in.weight"][0, 0, 0, 0] = math.nan
    save_file(tensors, str(f), metadata=meta)
    return folder


def test_extract_with_non_finite_features_fails_and_writes_nothing(nan_model, synthetic_roots, tmp_path, capsys):
    img = next((synthetic_roots["spair"] / "JPEGImages").rglob("*.jpg"))
    out = tmp_path / "f.safetensors"
    rc = main(["extract", "--images", str(img), "--model", str(nan_model), "--prompt", "empty", "--layers", "1",
               "--ensemble", "1", "--img-size", "128", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert str(img) in err and "non-finite" in err and len(err.strip().splitlines()) == 1


def test_evaluate_never_counts_non_finite_predictions(nan_model, synthetic_roots, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["evaluate", "--dataset", "spair", "--data-root", str(synthetic_roots["spair"]), "--model",
               str(nan_model), "--prompt", "empty", "--ensemble", "1", "--matcher", "nn,kernel_softmax",
               "--limit", "2", "--img-size", "128", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite" in err
    assert not (out / "metrics.json").exists()
    named = err.split("for image ")[1].split(" ")[0]
    assert Path(named).is_file() and Path(named).is_relative_to(synthetic_roots["spair"]), err
    if (out / "predictions.csv").exists():  # nothing counted
        assert len((out / "predictions.csv").read_text().strip().splitlines()) <= 1
