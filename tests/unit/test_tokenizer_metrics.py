"""Tokenizer metrics against hand-computed values and known invariants."""

import math
import os

import numpy as np
import pytest
import torch

from arm.tokenizer.metrics import (
    InceptionFeatures,
    code_histogram,
    code_perplexity,
    code_usage,
    frechet_distance,
    fsq_level_occupancy,
    linear_probe_accuracy,
    psnr,
)


def test_psnr_hand_computed():
    target = torch.zeros(2, 3, 4, 4)
    pred = torch.full_like(target, 0.1)  # mse 0.01 -> 20 dB
    pred[1] = 0.5  # mse 0.25 -> 10*log10(4) = 6.0206 dB
    assert psnr(pred, target).tolist() == pytest.approx([20.0, 10 * math.log10(4)], abs=1e-4)


def test_code_usage_and_perplexity():
    hist = code_histogram(torch.tensor([[0, 1], [2, 3]]), codebook_size=8)
    assert hist.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert code_usage(hist) == 0.5
    assert code_perplexity(hist) == pytest.approx(4.0)
    skewed = torch.tensor([3, 1])  # p = (3/4, 1/4): exp(H) = exp(-(.75 ln .75 + .25 ln .25)) = 1.7548
    assert code_perplexity(skewed) == pytest.approx(1.7548, abs=1e-4)


def test_fsq_level_occupancy_hand_computed():
    # levels [2, 3]: index = d0 + 2 * d1, so indices 0..5 are (d0, d1) = (0,0) (1,0) (0,1) (1,1) (0,2) (1,2)
    hist = torch.tensor([1, 2, 3, 4, 5, 6])  # 21 tokens
    occ = fsq_level_occupancy(hist, [2, 3])
    assert occ[0] == pytest.approx([(1 + 3 + 5) / 21, (2 + 4 + 6) / 21])
    assert occ[1] == pytest.approx([(1 + 2) / 21, (3 + 4) / 21, (5 + 6) / 21])


def test_fsq_level_occupancy_matches_drawn_digits():
    """Fresh random digits per channel (the ground truth) -> the quantizer's own index path -> histogram: each
    channel's occupancy equals the drawn digits' level counts."""
    from arm.tokenizer.fsq import FSQ

    levels = [4, 3, 5, 2]
    fsq = FSQ(levels)
    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator().manual_seed(seed)
    digits = torch.stack([torch.randint(0, n, (3000,), generator=gen) for n in levels], dim=1)  # (N, d)
    half = torch.tensor([n // 2 for n in levels], dtype=torch.float32)
    codes = (digits.float() - half) / half  # FSQ's normalised grid point of each digit
    indices = fsq.codes_to_indices(codes)
    occ = fsq_level_occupancy(code_histogram(indices, fsq.codebook_size), levels)
    for i, n_levels in enumerate(levels):
        expected = torch.bincount(digits[:, i], minlength=n_levels).double() / len(digits)
        assert occ[i] == pytest.approx(expected.tolist()), f"channel {i}, seed {seed}"
    with pytest.raises(ValueError, match="does not match FSQ levels"):
        fsq_level_occupancy(torch.zeros(10), levels)


def test_frechet_distance_gaussian_closed_form():
    rng = np.random.default_rng()
    a = rng.normal(0.0, 1.0, size=(20000, 1))
    b = rng.normal(3.0, 2.0, size=(20000, 1))
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 = 9 + 1
    assert frechet_distance(a, b) == pytest.approx(10.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    x = rng.normal(size=(500, 8))
    shift = rng.normal(size=8)
    assert frechet_distance(x, x + shift) == pytest.approx(float((shift**2).sum()), rel=1e-6)
    with pytest.raises(ValueError, match="equal d"):
        frechet_distance(x, x[:, :3])


def test_linear_probe_separable_and_random():
    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    centers = torch.randn(3, 16, generator=g) * 4
    y = torch.randint(0, 3, (600,), generator=g)
    x = centers[y] + torch.randn(600, 16, generator=g)
    assert linear_probe_accuracy(x[:400], y[:400], x[400:], y[400:]) > 0.97
    noise = torch.randn(600, 16, generator=g)
    assert linear_probe_accuracy(noise[:400], y[:400], noise[400:], y[400:]) < 0.6


def test_frechet_distance_with_fewer_samples_than_dims_matches_closed_forms():
    # n, m < d takes the singular-value form of the trace term; two cases with a closed form:
    rng = np.random.default_rng()
    a = rng.normal(size=(40, 300)) + rng.normal(size=300)
    shift = rng.normal(size=300)
    # a shifted copy has the same covariance: FD = |shift|^2
    assert frechet_distance(a, a + shift) == pytest.approx(float((shift**2).sum()), rel=1e-9)
    # a scaled copy (c > 0): mean c mu, covariance c^2 S, so FD = (1 - c)^2 (|mu|^2 + tr S)
    c = 1.7
    expected = (1 - c) ** 2 * (float((a.mean(0) ** 2).sum()) + float(np.trace(np.cov(a, rowvar=False))))
    assert frechet_distance(a, c * a) == pytest.approx(expected, rel=1e-9)


def write_random_inception(path) -> str:
    """torch-fidelity's InceptionV3 with its random initialisation (the real weights are not at hand), saved as a
    state dict: ~96 MB, ~2-4 s to build on one core."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    net_class = tf_inception.FeatureExtractorInceptionV3
    with pytest.MonkeyPatch.context() as patch:  # build without its pretrained weights (it would download them)
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(net_class, "load_state_dict", lambda self, state: None)
        net = net_class("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> str:
    return write_random_inception(tmp_path_factory.mktemp("inception") / "inception.pt")


def test_inception_features_from_a_local_file(inception_file):
    features = InceptionFeatures(inception_file)
    images = torch.rand(3, 3, 40, 40)
    out = features(images)
    assert out.shape == (3, 2048) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # the network torch-fidelity built is the one in the file
    saved = torch.load(inception_file, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in features.net.state_dict().items())


def test_inception_weights_that_are_missing_or_not_inception_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Inception weights at .*fd_teacher only"):
        InceptionFeatures(str(tmp_path / "missing.pt"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not torch-fidelity's InceptionV3 state dict") as err:
        InceptionFeatures(str(tmp_path / "other.pt"))
    assert "\n" not in str(err.value)


def test_reconstruction_metrics_under_bf16_autocast_match_fp32():
    """The evaluator scores reconstructions in fp32 even inside a bf16-mixed trainer's autocast."""
    from types import SimpleNamespace

    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    from arm.tokenizer.evaluate import TokenizerEvaluator

    images = torch.rand(4, 3, 32, 32)
    recon = (images + 0.05 * torch.randn_like(images)).clamp(0, 1)
    teacher = SimpleNamespace(embed_texts=lambda texts: torch.randn(len(texts), 8),
                              patch_features=lambda x: x.reshape(x.shape[0], 3, -1).transpose(1, 2))
    tokenizer = SimpleNamespace(codebook_size=16, decoder=SimpleNamespace(sample=lambda z, **kw: recon[: len(z)]))
    expected = ssim(recon, images, data_range=1.0, reduction="none")
    evaluator = TokenizerEvaluator(tokenizer, teacher, recon_images=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        evaluator._reconstruct(images, torch.zeros(4, 1, 1), None)
    torch.testing.assert_close(torch.tensor(evaluator.recon["ssim"]), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(evaluator.recon["psnr"]), psnr(recon, images), atol=1e-4, rtol=1e-5)


def test_geneval_reconstruction_scores_the_round_trip_like_generated_images(tmp_path):
    """A lossless round trip scores what the real images score (the judge's own verdicts on them); a tokenizer
    that returns blank backgrounds scores 0 (every GenEval prompt asks for at least one object)."""
    import json

    from arm.data.shapeworld.judge import score_geneval_image
    from arm.data.shapeworld.render import decode_png
    from arm.data.shapeworld.writer import write_bench
    from arm.tokenizer.evaluate import geneval_reconstruction

    write_bench(tmp_path, seed=int(torch.randint(0, 1000, ()).item()), num_test=4)
    records = [json.loads(line) for line in (tmp_path / "geneval.jsonl").read_text().splitlines()]
    truth = [score_geneval_image(decode_png((tmp_path / r["image"]).read_bytes()), r)["correct"] for r in records]

    class Lossless:  # "codes" are the images themselves
        def encode(self, images):
            return images

        def decode(self, codes, steps, cfg_scale, generator):
            return codes

    class Blank(Lossless):
        def decode(self, codes, steps, cfg_scale, generator):
            return torch.full_like(codes, 0.5)

    lossless = geneval_reconstruction(Lossless(), tmp_path, batch_size=64)
    assert sum(lossless["counts"].values()) == len(records) and len(lossless["counts"]) == 6  # all six tags
    by_tag = {}
    for r, ok in zip(records, truth):
        by_tag.setdefault(r["tag"], []).append(ok)
    for tag, oks in by_tag.items():
        assert lossless["per_tag"][tag] == pytest.approx(sum(oks) / len(oks))
    assert geneval_reconstruction(Blank(), tmp_path, batch_size=64, limit=100)["overall"] == 0.0


def test_reconstruction_breakdown_by_background_and_object_class():
    """``recon_background_acc`` and ``recon_object_recall/<class>_<size>`` from the detector's reading of each
    reconstruction: a lossless decoder recovers every background and object (as the real images do); one that
    returns the scene on another background with its first object removed loses every background and exactly those
    objects, counted per (class, size)."""
    from types import SimpleNamespace

    from arm.data.shapeworld.render import render
    from arm.data.shapeworld.scene import Scene, scene_for
    from arm.tokenizer.evaluate import TokenizerEvaluator

    seed = int(torch.randint(0, 10_000, ()).item())
    scenes = [s for s in (scene_for(seed, "val", i) for i in range(40)) if s.objects][:6]
    metas = [{"scene": s.to_json()} for s in scenes]
    images = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    changed = []
    for s in scenes:
        other = "slate" if s.background != "slate" else "khaki"
        changed.append(render(Scene(list(s.objects[1:]), background=other, resolution=s.resolution)))
    changed = torch.from_numpy(np.stack(changed)).permute(0, 3, 1, 2).float() / 255
    teacher = SimpleNamespace(embed_texts=lambda texts: torch.randn(len(texts), 8),
                              patch_features=lambda x: x.reshape(x.shape[0], 3, -1).transpose(1, 2))
    expected_total, expected_hit = {}, {}
    for s in scenes:
        for j, o in enumerate(s.objects):
            key = f"{o.cls}_{o.size}"
            expected_total[key] = expected_total.get(key, 0) + 1
            expected_hit[key] = expected_hit.get(key, 0) + int(j > 0)
    for recon, background, recall in ((images, 1.0, lambda k: 1.0),
                                      (changed, 0.0, lambda k: expected_hit[k] / expected_total[k])):
        tokenizer = SimpleNamespace(codebook_size=16,
                                    decoder=SimpleNamespace(sample=lambda z, recon=recon, **kw: recon[: len(z)]))
        evaluator = TokenizerEvaluator(tokenizer, teacher, recon_images=len(scenes))
        evaluator._reconstruct(images, torch.zeros(len(scenes), 1, 1), metas)
        out = evaluator.compute()
        assert out["recon_background_acc"] == background, seed
        got = {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("recon_object_recall/")}
        assert got == pytest.approx({k: recall(k) for k in expected_total}), seed
