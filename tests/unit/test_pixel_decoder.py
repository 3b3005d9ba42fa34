"""Pixel DiT (ARM paper §1, L_pix): shapes, overfitting, the Euler integrator, CFG and condition dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arm.tokenizer.pixel_decoder import PixelDiT, PixelDiTConfig, edge_loss, sincos_2d


def _tiny(**kw) -> PixelDiT:
    cfg = PixelDiTConfig(image_size=16, patch_size=4, dim=32, num_layers=2, num_heads=4, **kw)
    return PixelDiT(cond_dim=12, config=cfg)


def _randomise(model: PixelDiT) -> None:
    """Give the zero-initialised adaLN/output layers weights, so outputs depend on every input."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ada" in name or name.startswith("final"):
                p.normal_(0, 0.05)


def test_patchify_round_trip_and_positions():
    model = _tiny()
    x = torch.randn(2, 3, 16, 16)
    patches = model.patchify(x)
    assert patches.shape == (2, 16, 48)
    torch.testing.assert_close(patches[0, 1], x[0, :, 0:4, 4:8].reshape(-1))  # raster order
    assert torch.equal(model.unpatchify(patches), x)
    pos = sincos_2d(4, 32)
    assert pos.shape == (16, 32) and len({tuple(r.tolist()) for r in pos}) == 16


@pytest.mark.parametrize("n_cond", [16, 5])  # 16 == patches: added; 5: prepended
def test_shapes_and_conditioning_matters(n_cond):
    torch.manual_seed(0)
    model = _tiny()
    _randomise(model)
    x, t = torch.randn(3, 3, 16, 16), torch.rand(3)
    c1, c2 = torch.randn(3, n_cond, 12), torch.randn(3, n_cond, 12)
    v1 = model(x, t, c1)
    assert v1.shape == x.shape
    assert not torch.allclose(v1, model(x, t, c2))
    loss = model.loss(torch.rand(3, 3, 16, 16), c1, cond_drop_prob=0.3)
    assert loss.ndim == 0 and torch.isfinite(loss)
    img = model.sample(c1, steps=3)
    assert img.shape == (3, 3, 16, 16) and img.min() >= 0 and img.max() <= 1


def test_zero_init_predicts_zero_velocity():
    model = _tiny()
    v = model(torch.randn(2, 3, 16, 16), torch.rand(2), torch.randn(2, 16, 12))
    assert torch.equal(v, torch.zeros_like(v))


def test_overfits_four_images():
    torch.manual_seed(0)
    # Patch 2 keeps the patch (12 values) narrower than the width (32): a patch wider than the width cannot carry
    # the noise in x_t through the embedding, and the loss then plateaus high (measured: ~0.6 of initial).
    model = PixelDiT(12, PixelDiTConfig(image_size=8, patch_size=2, dim=32, num_layers=2, num_heads=4))
    images = torch.rand(4, 3, 8, 8)
    cond = torch.randn(4, 16, 12)

    def eval_loss() -> float:
        # Fixed noise and times, averaged over several draws, so the two measurements are comparable.
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return sum(model.loss(images, cond, generator=g).item() for _ in range(8)) / 8

    initial = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(100):
        opt.zero_grad()
        model.loss(images, cond).backward()
        opt.step()
    final = eval_loss()
    assert final < 0.5 * initial, (initial, final)


@pytest.mark.parametrize("prediction", ["v", "x"])
def test_euler_reaches_x1_for_exact_prediction(monkeypatch, prediction):
    import dataclasses

    model = _tiny()
    model.config = dataclasses.replace(model.config, prediction=prediction)
    cond = torch.randn(2, 16, 12)
    x1 = torch.rand(2, 3, 16, 16) * 2 - 1
    x0 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))  # what sample() will draw
    seen_t = []

    def exact(x_t, t, c, drop=None):
        seen_t.append(t[0].item())
        # the straight path's constant velocity, or the clean image it leads to
        return x1 - x0 if prediction == "v" else x1

    monkeypatch.setattr(model, "forward", exact)
    for steps in (1, 3, 10):
        seen_t.clear()
        img = model.sample(cond, steps=steps, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(img, (x1 + 1) / 2, atol=1e-5, rtol=0)
        assert seen_t == pytest.approx([i / steps for i in range(steps)])


def test_sampling_deterministic_under_generator():
    torch.manual_seed(0)
    model = _tiny()
    _randomise(model)
    cond = torch.randn(2, 16, 12)
    a = model.sample(cond, steps=4, cfg_scale=1.5, generator=torch.Generator().manual_seed(3))
    b = model.sample(cond, steps=4, cfg_scale=1.5, generator=torch.Generator().manual_seed(3))
    c = model.sample(cond, steps=4, cfg_scale=1.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cfg_combination():
    torch.manual_seed(1)
    model = _tiny().eval()
    _randomise(model)
    x, t, cond = torch.randn(2, 3, 16, 16), torch.rand(2), torch.randn(2, 16, 12)
    with torch.no_grad():
        v_cond = model.predict_velocity(x, t, cond)
        v_uncond = model.predict_velocity(x, t, cond, drop=torch.ones(2, dtype=torch.bool))
        torch.testing.assert_close(model.velocity(x, t, cond, 1.0), v_cond, rtol=0, atol=0)
        # the batched two-branch path equals the two separate forwards
        torch.testing.assert_close(model.velocity(x, t, cond, 1.0 + 1e-9), v_cond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.velocity(x, t, cond, 2.5), v_uncond + 2.5 * (v_cond - v_uncond),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.velocity(x, t, cond, 0.0), v_uncond, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_cond", [16, 5])
def test_cond_drop_one_uses_null_only(n_cond):
    torch.manual_seed(2)
    model = _tiny()
    _randomise(model)
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    drop = torch.ones(2, dtype=torch.bool)
    a = model(x, t, torch.randn(2, n_cond, 12), drop)
    b = model(x, t, torch.randn(2, n_cond, 12) * 5, drop)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.loss(torch.rand(2, 3, 16, 16), torch.randn(2, n_cond, 12), cond_drop_prob=1.0).backward()
    assert model.cond_proj.weight.grad is None or model.cond_proj.weight.grad.abs().sum() == 0
    assert model.null_cond.grad is not None and model.null_cond.grad.abs().sum() > 0


def test_bf16_autocast_loss_and_bad_cond_dim():
    torch.manual_seed(3)
    model = _tiny(time_sampling="uniform")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(torch.rand(2, 3, 16, 16), torch.randn(2, 16, 12), cond_drop_prob=0.5)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="cond_dim=12"):
        model(torch.randn(1, 3, 16, 16), torch.rand(1), torch.randn(1, 16, 7))


def test_bench_helpers_run_on_a_tiny_config():
    from arm.tokenizer.bench import bench_pixel_decoder, bench_projection

    cfg = PixelDiTConfig(image_size=16, patch_size=4, dim=48, num_layers=1, num_heads=4)
    for dtype in (torch.float32, torch.bfloat16):
        row = bench_pixel_decoder(cfg, cond_dim=12, batch=2, sample_steps=2, cfg_scale=1.5, dtype=dtype,
                                  warmup=0, repeats=1)
        assert row["train_img_s"] > 0 and row["sample_img_s"] > 0 and row["tokens"] == 16
    row = bench_pixel_decoder(cfg, cond_dim=12, batch=2, sample_steps=2, dtype=torch.bfloat16, warmup=1, repeats=1,
                              compiled=True)
    assert row["compiled"] and row["train_img_s"] > 0
    assert bench_projection(feature_dim=12, tokens=4, batch=2, warmup=0, repeats=1)["train_img_s"] > 0


def test_module_precision_bench_runs_at_the_embedded_sizes(tiny_world, tmp_path):
    from pathlib import Path

    from arm.tokenizer.bench import bench_module_precision

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    row = bench_module_precision(str(tmp_path), str(tiny_world / "tokenizer.json"), rounds=1, batch=2,
                                 experiments=str(experiments))
    assert row["fp32_step_s"] > 0 and row["bf16_step_s"] > 0
    assert row["fp32_over_bf16"] == pytest.approx(row["fp32_step_s"] / row["bf16_step_s"])


def test_x_prediction_velocity_is_derived_from_the_clean_image():
    """With prediction "x" the velocity is (x_hat - x_t) / (1 - t): hand-checked with a stubbed network."""
    model = PixelDiT(8, PixelDiTConfig(image_size=16, patch_size=4, dim=48, num_layers=1, num_heads=2,
                                       prediction="x"))
    x_hat = torch.rand(2, 3, 16, 16) * 2 - 1
    model.forward = lambda x_t, t, cond, drop=None: x_hat  # the "network" predicts this clean image
    x_t = torch.randn(2, 3, 16, 16)
    t = torch.tensor([0.25, 0.5])
    v = model.predict_velocity(x_t, t, torch.zeros(2, 16, 8))
    torch.testing.assert_close(v[0], (x_hat[0] - x_t[0]) / 0.75)
    torch.testing.assert_close(v[1], (x_hat[1] - x_t[1]) / 0.5)
    # an exact clean-image prediction integrates to that image from any start in one Euler step from t = 0
    x0 = torch.randn(2, 3, 16, 16)
    v0 = model.predict_velocity(x0, torch.zeros(2), torch.zeros(2, 16, 8))
    torch.testing.assert_close(x0 + v0, x_hat)


def test_logit_normal_time_location_and_scale():
    """logit(t) is N(time_mean, time_std^2): check its sample mean and spread on 20k draws (4+ standard errors)."""
    mean, std = float(torch.empty(()).uniform_(-1.5, 1.5)), float(torch.empty(()).uniform_(0.5, 1.5))
    dit = PixelDiT(8, PixelDiTConfig(image_size=8, patch_size=4, dim=48, num_layers=1, num_heads=2,
                                     time_mean=mean, time_std=std))
    t = dit.sample_t(20_000, torch.device("cpu"))
    logit = torch.log(t) - torch.log1p(-t)
    assert ((t > 0) & (t < 1)).all()
    assert abs(logit.mean().item() - mean) < 0.05 and abs(logit.std().item() - std) < 0.05
    with pytest.raises(ValueError, match="time_std must be > 0"):
        PixelDiT(8, PixelDiTConfig(image_size=8, patch_size=4, dim=48, num_layers=1, num_heads=2, time_std=0.0))


def test_edge_loss_is_the_gradient_difference_loss():
    """``edge_loss`` against finite differences written out with numpy, and its invariants: zero for a constant
    error, and a step edge of height h in one of W columns scores h^2 / (W - 1) per row pair."""
    error = torch.randn(2, 3, 5, 7)
    e = error.numpy()
    expected = (np.diff(e, axis=-1) ** 2).mean() + (np.diff(e, axis=-2) ** 2).mean()
    assert edge_loss(error).item() == pytest.approx(float(expected), rel=1e-5)
    assert edge_loss(torch.full((1, 3, 6, 6), 0.7)).item() == 0.0
    h = float(torch.empty(()).uniform_(0.5, 2.0))
    step = torch.zeros(1, 1, 4, 6)
    step[..., 3:] = h  # one vertical edge: 1 of the 5 horizontal differences is h, no vertical ones
    assert edge_loss(step).item() == pytest.approx(h * h / 5)


@pytest.mark.parametrize("prediction", ["x", "v"])
def test_loss_adds_the_weighted_edge_term_of_the_velocity_error(prediction):
    """L_pix with edge_weight w = mean(err^2) + w * edge_loss(err), err the velocity error at the same draws; the
    error is predicted minus true velocity x1 - x0 (hand-built from the same generator's noise and times)."""
    torch.manual_seed(0)
    w = float(torch.empty(()).uniform_(0.5, 5.0))
    plain, edged = _tiny(prediction=prediction), _tiny(prediction=prediction, edge_weight=w)
    _randomise(plain)
    edged.load_state_dict(plain.state_dict())
    images, cond = torch.rand(3, 3, 16, 16), torch.randn(3, 16, 12)
    error = plain.velocity_error(images, cond, 0.0, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(images.shape, generator=gen)
    t = plain.sample_t(3, torch.device("cpu"), gen)
    x1, tt = images * 2 - 1, t[:, None, None, None]
    v = plain.predict_velocity((1 - tt) * x0 + tt * x1, t, cond)
    torch.testing.assert_close(error, v - (x1 - x0))
    torch.testing.assert_close(plain.loss(images, cond, 0.0, torch.Generator().manual_seed(1)), error.square().mean())
    torch.testing.assert_close(edged.loss(images, cond, 0.0, torch.Generator().manual_seed(1)),
                               error.square().mean() + w * edge_loss(error))
    with pytest.raises(ValueError, match="edge_weight must be >= 0"):
        _tiny(edge_weight=-1.0)


def test_zero_time_prob_puts_that_share_of_draws_at_t_zero_where_the_loss_is_the_autoencoder_mse():
    """``zero_time_prob`` p: a share p of the training times is exactly 0 (binomial bound on 20k draws, ~5 standard
    errors), the rest keep ``time_sampling``'s law; at t = 0 an x-network's velocity error is x_hat - x1, the plain
    reconstruction error of the clean-image prediction from pure noise."""
    p = float(torch.empty(()).uniform_(0.1, 0.6))
    dit = PixelDiT(8, PixelDiTConfig(image_size=16, patch_size=4, dim=48, num_layers=1, num_heads=2,
                                     time_mean=-0.8, time_std=0.8, zero_time_prob=p))
    t = dit.sample_t(20_000, torch.device("cpu"))
    zero = t == 0
    assert abs(zero.float().mean().item() - p) < 5 * (p * (1 - p) / 20_000) ** 0.5
    rest = t[~zero]
    logit = torch.log(rest) - torch.log1p(-rest)
    assert abs(logit.mean().item() + 0.8) < 0.05 and abs(logit.std().item() - 0.8) < 0.05
    x_hat = torch.rand(2, 3, 16, 16) * 2 - 1
    dit.forward = lambda x_t, t, cond, drop=None: x_hat
    dit.sample_t = lambda batch, device, generator=None, logit_normal=None: torch.zeros(batch)
    images = torch.rand(2, 3, 16, 16)
    error = dit.velocity_error(images, torch.zeros(2, 16, 8))
    torch.testing.assert_close(error, x_hat - (images * 2 - 1))
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="zero_time_prob must be in"):
            PixelDiT(8, PixelDiTConfig(image_size=8, patch_size=4, dim=48, num_layers=1, num_heads=2,
                                       zero_time_prob=bad))


def test_logit_normal_override_replaces_the_configured_times_for_that_call_only():
    """``sample_t(..., logit_normal=(m, s))`` draws sigmoid(m + s n) whatever the config says (uniform included);
    without it the configured law stays. Moments of the logit on 20k draws (standard error ~0.007 x s)."""
    mean, std = float(torch.empty(()).uniform_(-1, 1)), float(torch.empty(()).uniform_(0.5, 1.5))
    for sampling in ("logit_normal", "uniform"):
        dit = PixelDiT(8, PixelDiTConfig(image_size=16, patch_size=4, dim=48, num_layers=1, num_heads=2,
                                         time_sampling=sampling, time_mean=-0.8, time_std=0.8))
        t = dit.sample_t(20_000, torch.device("cpu"), logit_normal=(mean, std))
        logit = torch.log(t) - torch.log1p(-t)
        assert abs(logit.mean().item() - mean) < 0.05 * std and abs(logit.std().item() - std) < 0.05 * std, (mean, std)
    own = dit.sample_t(20_000, torch.device("cpu"))  # uniform: mean 1/2, variance 1/12
    assert abs(own.mean().item() - 0.5) < 0.01 and abs(own.var().item() - 1 / 12) < 0.005


@pytest.mark.parametrize("n_cond", [16, 5])  # 16 == patches: added; 5: prepended
def test_cond_every_block_adds_each_blocks_map_of_the_condition_and_starts_as_the_plain_decoder(n_cond):
    """``cond_every_block``: with its maps at zero (their init) the decoder is the plain one with the same weights;
    with weights, block i > 0 reads the previous block's tokens plus its map of the projected condition, on the image
    tokens (same grid) or the prepended condition tokens, as a forward written out by hand gives."""
    torch.manual_seed(0)
    plain = _tiny()
    _randomise(plain)
    model = _tiny(cond_every_block=True)
    incompatible = model.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(incompatible.missing_keys) == ["cond_inject.0.bias", "cond_inject.0.weight"]
    x, t, cond = torch.randn(2, 3, 16, 16), torch.rand(2), torch.randn(2, n_cond, 12)
    torch.testing.assert_close(model(x, t, cond), plain(x, t, cond), rtol=0, atol=0)
    with torch.no_grad():
        model.cond_inject[0].weight.normal_(0, 0.2)
        model.cond_inject[0].bias.normal_(0, 0.2)
    # by hand: the two blocks with the map's output added between them
    from arm.tokenizer.pixel_decoder import modulate, sincos_1d

    h = model.patch_embed(model.patchify(x)) + model.pos
    c_tok = model.cond_proj(cond)
    if n_cond == 16:
        h = h + c_tok
    else:
        h = torch.cat([c_tok + model.cond_type + sincos_1d(torch.arange(n_cond), 32), h], dim=1)
    c = model.time_mlp(sincos_1d(t * 1000.0, model.config.time_freq_dim))
    h = model.blocks[0](h, c)
    extra = c_tok @ model.cond_inject[0].weight.T + model.cond_inject[0].bias
    h = h + F.pad(extra, (0, 0, 0, h.shape[1] - n_cond)) if n_cond != 16 else h + extra
    h = model.blocks[1](h, c)[:, -16:]
    shift, scale = model.final_ada(F.silu(c)).chunk(2, dim=-1)
    expected = model.unpatchify(model.final(modulate(h, shift, scale)))
    got = model(x, t, cond)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain(x, t, cond))
