"""Metrics: the Frechet distance, torch-fidelity plumbing offline, the EfficientNet feature space."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from squeezed_diffusion.cli import main
from squeezed_diffusion.data import load_dataset
from squeezed_diffusion.metrics import (
    FeatureWeightsError,
    evaluate,
    fetch_weights,
    frechet_distance,
    parse_feature_weights,
    reference_subset,
    resolve_weights,
)
from squeezed_diffusion.metrics.effnet import EffNetLite0Features, fold_batchnorm


def test_fd_pixels8_is_the_frechet_distance_of_8x8_pooled_pixels_in_0_1() -> None:
    """``fd_pixels8`` as ``evaluate`` reports it, against numpy: 16 px images mean-pooled over
    2 x 2 blocks to 8 x 8, scaled to [0, 1], and the closed form with scipy's sqrtm."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 3, 16, 16), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)

    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pooled = x.reshape(len(x), 3, 8, 2, 8, 2).mean((3, 5)) / 255
        flat = pooled.reshape(len(x), -1)
        return flat.mean(0), np.cov(flat, rowvar=False)

    (m1, s1), (m2, s2) = stats(a), stats(b)
    want = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    got = evaluate(torch.from_numpy(a), torch.from_numpy(b), ["fd_pixels8"])["fd_pixels8"]
    assert got == pytest.approx(want, rel=1e-4)


def test_frechet_distance_matches_scipy_sqrtm_and_vanishes_on_identical_stats() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(0.3, 1.0, size=(400, 12)) @ rng.normal(size=(12, 12))
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert abs(frechet_distance(mu1, s1, mu2, s2) - expected) < 1e-6 * expected
    assert frechet_distance(mu1, s1, mu1, s1) < 1e-9 * np.trace(s1)
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu1, s1, mu2[:3], s2)


def test_reference_subset_is_seeded_random_not_a_prefix() -> None:
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2)
    sub = reference_subset(images, 10)
    assert torch.equal(sub, reference_subset(images, 10)) and len(sub) == 10
    assert sub[:, 0, 0, 0].tolist() != list(range(10)) and sub[-1, 0, 0, 0] > 10
    assert reference_subset(images, None) is images
    with pytest.raises(ValueError, match="has 100"):
        reference_subset(images, 101)


# -------------------------------------------------------------- torch-fidelity, offline


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    """A randomly initialised torch-fidelity InceptionV3 state dict (the real one downloads)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    class Untrained(fe.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return None

    original = fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        net = Untrained("random-inception", ["2048"])
    finally:
        fe.load_state_dict_from_url = original
    path = tmp_path_factory.mktemp("weights") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def images(n: int, seed: int, size: int = 16, offset: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size)
    return (smooth * 200 + offset).clamp(0, 255).to(torch.uint8)


def test_fid_isc_kid_prc_run_through_torch_fidelity_offline(inception_weights) -> None:
    samples, reference = images(10, 1), images(10, 2)
    kwargs = {"feature_weights": {"inception": inception_weights}, "prc_extractor": "inception"}
    result = evaluate(samples, reference, ("fid", "isc", "kid", "prc"), **kwargs)
    for key in ("fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "precision", "recall"):
        assert np.isfinite(result[key]), key
        assert result["feature_extractor"][key].startswith("inception-v3-compat:")
    assert result["feature_extractor"]["isc_mean"].startswith("inception-v3-compat:logits")
    assert result["fid"] > 0 and 0 <= result["precision"] <= 1
    assert result["num_samples"] == 10 and result["num_reference"] == 10
    cached = list((Path(_cache()) / "fidelity").glob("ref-*-inception-v3-compat-features-*.pt"))
    assert cached, "reference features are cached by fingerprint and extractor"
    weights = {"feature_weights": kwargs["feature_weights"]}  # prc_extractor: prc only
    same = evaluate(reference, reference, ("fid",), **weights)  # also reads the cache
    assert same["fid"] < 1e-3 * result["fid"]
    # each result key holds torch-fidelity's own number for it (not, say, KID's std as its mean)
    import torch_fidelity

    from squeezed_diffusion.metrics.evaluate import _Uint8Images as Uint8  # serves the images

    raw = torch_fidelity.calculate_metrics(
        input1=Uint8(samples), input2=Uint8(reference), feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(inception_weights), fid=True, isc=True, kid=True,
        prc=True, rng_seed=0, isc_splits=10, kid_subset_size=10, save_cpu_ram=True, verbose=False,
        cuda=torch.cuda.is_available(),
    )  # fmt: skip
    ours = {"frechet_inception_distance": "fid", "inception_score_mean": "isc_mean",
            "inception_score_std": "isc_std", "kernel_inception_distance_mean": "kid_mean",
            "kernel_inception_distance_std": "kid_std", "precision": "precision", "recall": "recall"}  # fmt: skip
    for key, name in ours.items():
        assert result[name] == pytest.approx(raw[key], rel=1e-6, abs=1e-9), name


def _cache() -> str:
    import os

    return os.environ["SQDM_CACHE"]


def _refuse_sampling(monkeypatch, when: str) -> None:
    """evaluate_run fails the test if it draws a sample (``when``: what should come first)."""
    import squeezed_diffusion.evaluation.generate as generate_module

    def no_sampling(*args, **kwargs):
        raise AssertionError(f"sampled {when}")

    monkeypatch.setattr(generate_module, "generate", no_sampling)


def test_missing_weights_name_the_file_and_where_to_put_it(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FeatureWeightsError) as err:
        resolve_weights("inception")
    message = str(err.value)
    assert "\n" not in message and "weights-inception-2015-12-05-6726825d.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "--feature-weights" in message
    with pytest.raises(FeatureWeightsError, match=r"vgg16-397923af\.pth"):
        resolve_weights("vgg16")

    samples = tmp_path / "samples.npz"
    np.savez(samples, images=images(4, 0).permute(0, 2, 3, 1).numpy())
    ref = tmp_path / "ref.npy"
    np.save(ref, images(4, 1).permute(0, 2, 3, 1).numpy())
    assert main(["evaluate", str(samples), "--reference", str(ref), "--metrics", "fid"]) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr.startswith("sqdm: error:") and "\n" not in stderr
    assert "weights-inception-2015-12-05-6726825d.pth" in stderr

    # a run is sampled only once the weights are there: the error comes before the sampling
    import squeezed_diffusion.evaluation.generate as generate_module

    evaluate_run, checks = generate_module.evaluate_run, []
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):  # cheap checks come first
        evaluate_run("a-run", 8, sampler="euler", reference=images(4, 1), metrics=("fid",))
    monkeypatch.setattr(generate_module, "check_sampling", lambda *args: checks.append(args))
    _refuse_sampling(monkeypatch, "before fetching the feature weights")
    with pytest.raises(FeatureWeightsError, match="weights-inception"):
        evaluate_run("a-run", 8, reference=images(4, 1), metrics=("fid",))
    assert len(checks) == 1

    missing = tmp_path / "nowhere.pth"
    argv = ["evaluate", str(samples), "--reference", str(ref), "--metrics", "fid"]
    assert main([*argv, "--feature-weights", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    torch.save({"not": "tensors"}, tmp_path / "bad.pth")
    assert main([*argv, "--feature-weights", f"inception={tmp_path / 'bad.pth'}"]) == 2
    assert "does not hold InceptionV3 weights" in capsys.readouterr().err
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")  # torch.load itself fails
    assert main([*argv, "--feature-weights", f"inception={tmp_path / 'garbage.pth'}"]) == 2
    stderr = capsys.readouterr().err.strip()
    assert "does not hold InceptionV3 weights" in stderr and "\n" not in stderr


def test_feature_weights_specs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("w.pth", "a=b.pth", "c.pth"):
        Path(name).write_bytes(b"weights")
    assert parse_feature_weights(["w.pth"], ["inception"]) == {"inception": Path("w.pth")}
    both = parse_feature_weights(["vgg16=a=b.pth", "inception=c.pth"], ["inception", "vgg16"])
    assert both == {"vgg16": Path("a=b.pth"), "inception": Path("c.pth")}
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_feature_weights(["w.pth"], ["inception", "vgg16"])
    # never ignored: weights no metric uses, a name given twice, a missing file
    with pytest.raises(ValueError, match="no requested metric uses vgg16"):
        parse_feature_weights(["vgg16=w.pth"], ["inception"])
    with pytest.raises(ValueError, match="gives inception twice"):
        parse_feature_weights(["inception=w.pth", "inception=c.pth"], ["inception", "vgg16"])
    with pytest.raises(FileNotFoundError, match=r"missing\.pth is not a file"):
        parse_feature_weights(["missing.pth"], ["inception"])


# -------------------------------------------------------------- the offline EfficientNet space


def test_batchnorm_folding_keeps_the_features() -> None:
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    net = EfficientNet.from_name("efficientnet-lite0").eval()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net.extract_features(x)
        fold_batchnorm(net)
        after = net.extract_features(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4 * before.abs().max())


def test_effnet_loads_offline_and_separates_distributions() -> None:
    photos = load_dataset("photos", resolution=16, subset=32, seed=0).images
    noise = (torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).byte()
    same = evaluate(photos[:16], photos[16:], ("fd_effnet", "prc_effnet"))
    other = evaluate(noise, photos[16:], ("fd_effnet", "prc_effnet"))
    assert other["fd_effnet"] > 2 * same["fd_effnet"] > 0
    assert other["precision_effnet"] < same["precision_effnet"]
    assert same["feature_extractor"]["fd_effnet"].startswith("effnet-lite0:1280")
    assert "fid" not in same and "fid" not in other
    extractor = EffNetLite0Features("effnet-lite0", ["1280"])
    (features,) = extractor(photos[:2])
    assert features.shape == (2, 1280)


def test_weights_are_checked_once_per_file_and_unknown_names_refused(
    inception_weights, tmp_path, monkeypatch
) -> None:
    """A command that fetches the weights before sampling and again when scoring unpickles
    each file once (VGG16 is 528 MB), again once the file changes; names that are no
    feature extractor are refused before anything is loaded."""
    import squeezed_diffusion.metrics.weights as weights

    loads = []
    real = weights.load_state_dict
    monkeypatch.setattr(weights, "load_state_dict", lambda *a: loads.append(a) or real(*a))
    copy = tmp_path / "inception.pth"
    copy.write_bytes(inception_weights.read_bytes())
    for _ in range(2):
        assert fetch_weights(["inception"], {"inception": str(copy)})["inception"] == copy
    assert len(loads) == 1
    os.utime(copy, ns=(0, 0))  # the file changed: checked again
    resolve_weights("inception", copy)
    assert len(loads) == 2
    with pytest.raises(ValueError, match=r"unknown feature extractor\(s\) incept in"):
        fetch_weights(["inception"], {"incept": copy})
    assert len(loads) == 2


def test_verbose_evaluation_names_results_by_their_features(capsys) -> None:
    """torch-fidelity's summary calls any Frechet distance "Frechet Inception Distance"; the
    verbose output names each by our result key instead (its progress passes through)."""
    photos = load_dataset("photos", resolution=16, subset=32, seed=0).images
    result = evaluate(photos[:16], photos[16:], ("fd_effnet", "prc_effnet"), verbose=True)
    err = capsys.readouterr().err
    assert "Inception" not in err and "Extracting features" in err
    for key in ("fd_effnet", "precision_effnet", "recall_effnet"):
        assert f"{key}: {result[key]:.7g}" in err
    assert "F-score (effnet features): " in err


def test_run_reference_is_what_the_trainer_trained_on(tmp_path) -> None:
    """The evaluation reference of a run is the Trainer's own dataset, also for `photos`,
    whose crops depend on the data seed (not on the run's seed)."""
    from squeezed_diffusion.training.config import resolve_config
    from squeezed_diffusion.training.run import Run
    from squeezed_diffusion.training.trainer import Trainer

    cfg = resolve_config(None, dataset="photos", resolution=16, subset=32, seed=7, steps=1,
                         batch_size=8, out=str(tmp_path / "run"))  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    assert torch.equal(Run(tmp_path / "run").reference().images, trainer.dataset.images)
    other_seed = load_dataset("photos", resolution=16, subset=32, seed=7).images
    assert not torch.equal(other_seed, trainer.dataset.images)  # the run's seed is not the data's


def test_precision_and_recall_are_not_swapped() -> None:
    """torch-fidelity >= 0.4 takes the generated set as input1: a mode-collapsed generated set
    (jittered copies of one real image) has high precision and low recall, not the reverse."""
    real = load_dataset("photos", resolution=16, subset=48, seed=3).images
    g = torch.Generator().manual_seed(0)
    jitter = torch.randint(-3, 4, (48, 3, 16, 16), generator=g)
    collapsed = (real[:1].int() + jitter).clamp(0, 255).to(torch.uint8)
    result = evaluate(collapsed, real, ("prc_effnet",))
    assert result["precision_effnet"] > 0.8 and result["recall_effnet"] < 0.2, result


def test_effnet_input_scaling_and_imagenet_classes() -> None:
    """uint8 0 and 255 become the weights' input range (x - 127) / 128, and with that scaling
    the ImageNet head recognises scikit-image's cat and coffee confidently (a wrong scaling
    or a wrong resize would not)."""
    from skimage import data

    extractor = EffNetLite0Features("effnet-lite0", ["1280"])
    zeros = extractor.normalise(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    full = extractor.normalise(torch.full((1, 3, 16, 16), 255, dtype=torch.uint8))
    assert zeros.shape == (1, 3, 224, 224)
    assert torch.allclose(zeros, torch.tensor(-127 / 128)) and torch.allclose(
        full, torch.tensor(1.0)
    )
    for photo, classes, least in (
        (data.chelsea(), range(281, 286), 0.8),
        (data.coffee(), [967], 0.6),
    ):
        x = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None]
        with torch.no_grad():
            probs = torch.softmax(extractor.net._fc(extractor(x)[0]), -1)[0]
        assert float(probs[list(classes)].sum()) > least, probs.topk(3)


def test_evaluate_refuses_options_it_would_ignore_or_misread(monkeypatch) -> None:
    """As the CLI does: a metrics string (read letter by letter), a reference subset too
    small for a covariance, weights or a prc extractor no metric uses, a bad batch size or
    one no metric reads; ``evaluate_run`` refuses the same before it samples."""
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    pixels = ["fd_pixels8"]
    cases = [
        ({"metrics": "fd_pixels8"}, r"metrics must be a list of names; pass \['fd_pixels8'\]"),
        ({"num_reference": 1}, "num_reference must be at least 2"),
        ({"num_reference": True}, "num_reference must be an integer or None"),
        ({"feature_weights": {"inception": "/nowhere.pt"}}, "inception, which no metric uses"),
        ({"prc_extractor": "inception"}, "prc_extractor applies to the prc metric only"),
        ({"batch_size": -3}, "batch_size must be an integer >= 1, got -3"),
        ({"batch_size": 5}, "batch_size is the feature extractors' batch, and fd_pixels8 extract"),
    ]
    import squeezed_diffusion.evaluation.generate as generate_module

    monkeypatch.setattr(generate_module, "check_sampling", lambda *args: None)
    _refuse_sampling(monkeypatch, "before checking the scoring options")
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            evaluate(images, images, **{"metrics": pixels, **kwargs})
        if "num_reference" not in kwargs:  # checked against the reference, before sampling too
            with pytest.raises(ValueError, match=message):
                generate_module.evaluate_run(
                    "a-run", 8, reference=images, **{"metrics": pixels, **kwargs}
                )
    for kwargs, message in (
        ({"verbose": "no"}, "^verbose must be True or False, got 'no'$"),
        ({"seed": -1}, "^seed must be an integer >= 0, got -1$"),
        ({"seed": 1.5}, r"^seed must be an integer >= 0, got 1\.5$"),
    ):
        with pytest.raises(ValueError, match=message):
            evaluate(images, images, pixels, **kwargs)
    assert evaluate(images, images, pixels, num_reference=2)["num_reference"] == 2
    for other, fix in (
        (images[:, :1], r"score them against a reference of 1-channel images$"),
        (images[:, :, :4, :4], r"load the reference at the samples' resolution \(--resolution\)$"),
    ):
        with pytest.raises(
            ValueError, match=r"^samples are \(\d, \d, \d\) but the reference .*; " + fix
        ):
            evaluate(other, images, pixels)
