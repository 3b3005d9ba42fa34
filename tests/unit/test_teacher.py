"""Teacher: shapes, the sigmoid loss by hand, save/load round trip, the CLIP wrapper."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from arm.teacher.clip_teacher import ClipTeacher
from arm.teacher.losses import sigmoid_contrastive_loss
from arm.teacher.model import DualEncoder, TeacherConfig, load_teacher, save_teacher, tokenize_texts

TINY = TeacherConfig(image_size=32, patch_size=8, image_dim=32, image_layers=2, image_heads=2, text_dim=32,
                     text_layers=2, text_heads=2, embed_dim=16, vocab_size=50, max_text_len=12)


def _batch(b: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, 32, 32, generator=g)
    ids = torch.randint(2, 50, (b, 7), generator=g)
    mask = torch.ones(b, 7, dtype=torch.bool)
    mask[0, 4:] = False
    return images, ids, mask


def test_dual_encoder_shapes_and_normalisation():
    torch.manual_seed(0)
    model = DualEncoder(TINY)
    images, ids, mask = _batch()
    assert model.patch_features(images).shape == (3, 16, 32)
    img, txt = model(images, ids, mask)
    assert img.shape == txt.shape == (3, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))


def test_text_embedding_ignores_padding():
    torch.manual_seed(0)
    model = DualEncoder(TINY).eval()
    _, ids, mask = _batch()
    other = ids.clone()
    other[0, 4:] = 3  # change only padded positions of row 0
    with torch.no_grad():
        torch.testing.assert_close(model.text_embedding(ids, mask)[0], model.text_embedding(other, mask)[0])
        torch.testing.assert_close(model.text_embedding(ids, mask)[0], model.text_embedding(ids[:1, :4])[0])


def test_bad_image_size_is_one_line_value_error():
    model = DualEncoder(TINY)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, 32, 32\), got \(1, 3, 64, 64\)"):
        model.image_embedding(torch.rand(1, 3, 64, 64))


def test_sigmoid_loss_by_hand_2x2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = 1 / math.sqrt(2)
    txt = torch.tensor([[s, s], [0.0, 1.0]])
    t, b = 10.0, -10.0
    # <x_i, y_j>: [[s, 0], [s, 1]]; logits = t * dot + b
    logits = [[t * s + b, b], [t * s + b, t + b]]
    labels = [[1, -1], [-1, 1]]

    def log_sigmoid(z: float) -> float:
        return -math.log1p(math.exp(-z))

    expected = -sum(log_sigmoid(labels[i][j] * logits[i][j]) for i in range(2) for j in range(2)) / 2
    got = sigmoid_contrastive_loss(img, txt, torch.tensor(math.log(t)), torch.tensor(b))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_loss_init_matches_siglip():
    model = DualEncoder(TINY)
    assert model.logit_scale.exp().item() == pytest.approx(10.0)
    assert model.logit_bias.item() == pytest.approx(-10.0)


def test_tokenize_texts_pads_and_appends_eos(tmp_path):
    class Tok:
        pad_id, eos_id = 0, 1

        def encode_batch(self, texts):
            return [[5] * len(t) for t in texts]

    ids, mask = tokenize_texts(Tok(), ["ab", "abcdef"], max_len=4)
    assert ids.tolist() == [[5, 5, 1, 0], [5, 5, 5, 1]]
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DualEncoder(TINY).eval()
    save_teacher(model, TINY, str(tmp_path / "t"))
    loaded = load_teacher(str(tmp_path / "t"))
    assert loaded.config == TINY
    images, ids, mask = _batch()
    with torch.no_grad():
        for a, b in zip(model(images, ids, mask), loaded(images, ids, mask)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["config.json", "model.safetensors"]


def test_load_missing_teacher_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="arm teacher fit"):
        load_teacher(str(tmp_path / "nothing"))


# ------------------------------------------------------------------------------------------------ CLIP


def _tiny_clip():
    from clip.model import CLIP

    torch.manual_seed(0)
    return CLIP(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=2,
                transformer_layers=1).float().eval()


def test_clip_teacher_from_state_dict_matches_original(tmp_path):
    import clip

    model = _tiny_clip()
    path = tmp_path / "clip.pt"
    torch.save(model.state_dict(), path)
    teacher = ClipTeacher.from_file(str(path), text_heads=2)
    images = torch.rand(2, 3, 32, 32)
    texts = ["a red circle", "two blue squares"]
    with torch.no_grad():
        assert teacher.patch_features(images).shape == (2, 4, 64)
        img, txt = teacher.image_embedding(images), teacher.text_embedding(texts)
        assert img.shape == txt.shape == (2, 32)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        ref_img = model.encode_image((images - mean) / std)
        ref_txt = model.encode_text(clip.tokenize(texts))
        torch.testing.assert_close(img, ref_img / ref_img.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(txt, ref_txt / ref_txt.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-5)
        assert teacher.image_embedding(torch.rand(1, 3, 48, 48)).shape == (1, 32)  # resized inside


def test_clip_default_heads_fail_clearly_for_narrow_width(tmp_path):
    path = tmp_path / "clip.pt"
    torch.save(_tiny_clip().state_dict(), path)
    with pytest.raises(ValueError, match="pass text_heads"):
        ClipTeacher.from_file(str(path))


def test_clip_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CLIP weights"):
        ClipTeacher.from_file(str(tmp_path / "missing.pt"))


# ------------------------------------------------------------------------------------- hard negatives


def test_hard_negative_loss_by_hand_2_images_2_negatives():
    from arm.teacher.losses import hard_negative_labels, sigmoid_contrastive_loss_with_negatives

    s = 1 / math.sqrt(2)
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[s, s], [0.0, 1.0]])
    neg = torch.tensor([[1.0, 0.0], [-s, s]])
    t, b = 10.0, -10.0
    # dots of image i with columns [pos0, pos1, neg0, neg1]
    dots = [[s, 0.0, 1.0, -s], [s, 1.0, 0.0, s]]
    labels = [[1, -1, -1, -1], [-1, 1, -1, -1]]

    def log_sigmoid(z: float) -> float:
        return -math.log1p(math.exp(-z))

    expected = -sum(log_sigmoid(labels[i][j] * (t * dots[i][j] + b)) for i in range(2) for j in range(4)) / 2
    assert hard_negative_labels(2, 2).tolist() == labels
    got = sigmoid_contrastive_loss_with_negatives(img, pos, neg, torch.tensor(math.log(t)), torch.tensor(b))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # no negatives: exactly the plain SigLIP loss
    plain = sigmoid_contrastive_loss(img, pos, torch.tensor(math.log(t)), torch.tensor(b))
    none = sigmoid_contrastive_loss_with_negatives(img, pos, pos[:0], torch.tensor(math.log(t)), torch.tensor(b))
    assert none.item() == pytest.approx(plain.item(), rel=1e-7)


def _scenes(n: int = 200):
    from arm.data.shapeworld.scene import scene_for

    return [scene_for(0, "train", i) for i in range(n)]


def test_perturbed_scene_differs_in_exactly_one_attribute():
    from arm.data.shapeworld.scene import heldout_combinations
    from arm.teacher.negatives import negative_rng, perturb_scene

    fields = []
    for i, scene in enumerate(_scenes()):
        out, field = perturb_scene(scene, negative_rng(f"train-{i}", 3), shape_prob=0.75)
        fields.append(field)
        assert out.background == scene.background and len(out.objects) == len(scene.objects)
        diffs = [(k, name) for k, (a, b) in enumerate(zip(scene.objects, out.objects))
                 for name in ("cls", "color", "size", "bbox") if getattr(a, name) != getattr(b, name)]
        assert len(diffs) == 1, (scene, out)
        assert diffs[0][1] == {"class": "cls", "color": "color"}[field]
        assert not heldout_combinations(out)  # train scenes stay train-legal
    assert 0.6 < fields.count("class") / len(fields) < 0.9  # mostly shape, sometimes colour


def test_hard_negative_captions_are_deterministic_and_name_the_change():
    from arm.data.shapeworld.scene import Scene
    from arm.teacher.negatives import hard_negative_captions, negative_rng, perturb_scene

    metas = [{"key": f"train-{i}", "scene": s.to_json()} for i, s in enumerate(_scenes(20))]
    a = hard_negative_captions(metas, step=5, k=2)
    assert len(a) == 40 and a == hard_negative_captions(metas, step=5, k=2)
    assert a != hard_negative_captions(metas, step=6, k=2)
    for m, text in zip(metas, a[:20]):  # the caption describes the perturbed scene's changed object
        out, field = perturb_scene(Scene.from_json(m["scene"]), negative_rng(m["key"], 5, 0))
        new = [o for o, p in zip(out.objects, Scene.from_json(m["scene"]).objects) if o != p][0]
        assert (new.cls if field == "class" else new.color) in text


def test_short_pair_names_one_object_and_its_change():
    from arm.teacher.negatives import negative_rng, perturb_object, short_pair

    made = 0
    for i, scene in enumerate(_scenes()):
        pair = short_pair(scene, negative_rng(f"train-{i}", 0, -1))
        if pair is None:
            continue
        made += 1
        pos, neg = pair
        _, field, j = perturb_object(scene, negative_rng(f"train-{i}", 0, -1))  # same rng stream, same draw
        assert pos != neg and len(pos.split()) == len(neg.split())  # same wording, one word changed
        assert sum(a != b for a, b in zip(pos.split(), neg.split()) if {a, b} != {"a", "an"}) == 1  # "an orange"
        assert scene.objects[j].cls in pos or scene.objects[j].color in pos
    assert made > 150  # most scenes give a valid pair


def test_training_texts_short_texts_and_negatives(tmp_path):
    import random

    from arm.data.shapeworld.scene import scene_for
    from arm.data.shapeworld.text import caption
    from arm.data.text_tokenizer import train_text_tokenizer
    from arm.teacher.module import TeacherModule

    tok = str(tmp_path / "tokenizer.json")
    rng = random.Random(0)
    train_text_tokenizer([caption(scene_for(0, "train", i), rng) for i in range(200)], 300, tok)
    cfg = TeacherConfig(embed_dim=16, image_dim=32, text_dim=32, image_layers=1, text_layers=1, image_heads=2,
                        text_heads=2)
    metas = [{"key": f"k{i}", "scene": scene_for(0, "train", i).to_json(), "caption": f"cap {i}"} for i in range(6)]
    batch = {"meta": metas, "image": torch.rand(6, 3, 64, 64)}
    texts, negatives = TeacherModule(tok, cfg, hard_negatives=2).training_texts(batch, step=0)
    assert texts == [f"cap {i}" for i in range(6)] and len(negatives) == 12
    module = TeacherModule(tok, cfg, hard_negatives=2, short_text_prob=1.0)
    texts, short_negs = module.training_texts(batch, step=0)
    short = [i for i, t in enumerate(texts) if not t.startswith("cap")]
    assert short and all(len(texts[i].split()) <= 6 for i in short)
    assert all(len(short_negs[i].split()) == len(texts[i].split()) for i in short)  # same short wording
    assert short_negs[6:] == negatives[6:]  # the second negative stays a full caption
    loss = module._train_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_conv_stem_keeps_token_grid_and_round_trips(tmp_path):
    import dataclasses

    cfg = dataclasses.replace(TINY, stem="conv")
    torch.manual_seed(0)
    model = DualEncoder(cfg).eval()
    images, ids, mask = _batch()
    assert model.patch_features(images).shape == (3, 16, 32)
    save_teacher(model, cfg, str(tmp_path / "t"))
    loaded = load_teacher(str(tmp_path / "t"))
    assert loaded.config.stem == "conv"
    with torch.no_grad():
        torch.testing.assert_close(model.image_embedding(images), loaded.image_embedding(images), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown stem"):
        DualEncoder(dataclasses.replace(TINY, stem="nope"))


def test_hard_negative_ranking_loss_hand_computed():
    import math

    from arm.teacher.losses import hard_negative_ranking_loss

    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # image 0 matches its caption, image 1 is orthogonal to it
    neg = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # K = 1: image 0's negative is orthogonal, image 1's matches
    scale = torch.tensor(math.log(10.0))
    # image 0: logits (10, 0) -> log(1 + e^-10); image 1: logits (0, 10) -> log(1 + e^10)
    expected = (math.log1p(math.exp(-10)) + math.log1p(math.exp(10))) / 2
    assert hard_negative_ranking_loss(img, pos, neg, scale).item() == pytest.approx(expected, rel=1e-5)


def test_cnn_stem_downsamples_by_patch_size_and_rejects_odd_patches():
    import dataclasses

    from arm.teacher.model import cnn_stem

    stem = cnn_stem(8, 32)
    convs = [m for m in stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 3 and convs[-1].out_channels == 32  # log2(8) = 3 halvings
    assert stem(torch.rand(2, 3, 32, 32)).shape == (2, 32, 4, 4)
    model = DualEncoder(dataclasses.replace(TINY, stem="cnn"))
    assert model.patch_features(_batch()[0]).shape == (3, 16, 32)
    with pytest.raises(ValueError, match="power-of-two"):
        cnn_stem(6, 32)


def test_caption_head_loss_reads_the_image_and_is_not_exported(tmp_path):
    import random

    from arm.ar.model import prefix_caption_loss
    from arm.data.shapeworld.scene import scene_for
    from arm.data.shapeworld.text import caption
    from arm.data.text_tokenizer import train_text_tokenizer
    from arm.teacher.module import TeacherModule

    tok = str(tmp_path / "tokenizer.json")
    rng = random.Random(0)
    train_text_tokenizer([caption(scene_for(0, "train", i), rng) for i in range(200)], 300, tok)
    cfg = TeacherConfig(embed_dim=16, image_dim=32, text_dim=32, image_layers=1, text_layers=1, image_heads=2,
                        text_heads=2, stem="cnn")
    metas = [{"key": f"k{i}", "scene": scene_for(0, "train", i).to_json(), "caption": f"cap {i}"} for i in range(4)]
    batch = {"meta": metas, "image": torch.rand(4, 3, 64, 64)}
    plain = TeacherModule(tok, cfg)
    assert plain.caption_head is None  # weight 0 builds no decoder
    torch.manual_seed(0)
    module = TeacherModule(tok, cfg, caption_weight=0.5)
    # The caption term is exactly caption_weight x the prefix-LM loss of the full caption on the patch features.
    features = module.model.patch_features(batch["image"])
    ids, mask = module._encode([m["caption"] for m in metas])
    expected = prefix_caption_loss(module.caption_head, module.caption_prefix(features), ids, mask)
    torch.testing.assert_close(module._caption_loss(features, [m["caption"] for m in metas]), expected)
    # Gradients of the caption loss reach the image tower (that is its purpose) ...
    expected.backward()
    assert module.model.patch_embed[0].weight.grad.abs().sum() > 0
    # ... and the optimiser trains the decoder, but the export holds only the dual encoder.
    names = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert all(id(p) in names for p in module.caption_head.parameters())
    save_teacher(module.model, module.config, str(tmp_path / "t"))
    assert load_teacher(str(tmp_path / "t")).state_dict().keys() == module.model.state_dict().keys()


def test_attribute_labels_by_hand_and_held_out_pairs_never_named():
    from arm.data.shapeworld.world import CLASSES, COLORS, HELDOUT_COLOR_SHAPE
    from arm.teacher.attributes import attribute_concepts, attribute_texts, concept_labels

    concepts = [("red", None), (None, "circle"), ("red", "circle"), ("blue", "square"), ("blue", None)]
    scenes = [{"objects": [{"color": "red", "class": "square"}, {"color": "blue", "class": "circle"}]},
              {"objects": [{"color": "red", "class": "circle"}]},
              {"objects": []}]
    expected = torch.tensor([[1, 1, -1, -1, 1],  # red (square), circle (blue), no red circle, no blue square, blue
                             [1, 1, 1, -1, -1],
                             [-1, -1, -1, -1, -1]], dtype=torch.float32)
    assert torch.equal(concept_labels(scenes, concepts), expected)
    all_concepts = attribute_concepts()
    assert len(all_concepts) == len(COLORS) + len(CLASSES) + len(COLORS) * len(CLASSES) - len(HELDOUT_COLOR_SHAPE)
    texts = attribute_texts(7, all_concepts)
    assert texts == attribute_texts(7, all_concepts)  # a pure function of the step
    for color, cls in HELDOUT_COLOR_SHAPE:
        assert not any(f"{color} {cls}" in t for t in texts)
    assert "an orange shape" in " ".join(texts) and "a orange" not in " ".join(texts)
    # the zero-shot evaluation wordings ("a {} shape", "a {}") are never a whole training text
    assert not set(texts) & ({f"a {c} shape" for c in COLORS} | {f"a {k}" for k in CLASSES})


def test_attribute_loss_uses_exact_labels_and_own_bias(tmp_path):
    from arm.data.shapeworld.scene import scene_for
    from arm.teacher.attributes import attribute_texts, concept_labels
    from arm.teacher.losses import sigmoid_loss_from_labels
    from arm.teacher.module import TeacherModule

    tok, cfg = _tiny_tokenizer_and_config(tmp_path, " there is an image with a drawing picture photo")
    metas = [{"key": f"k{i}", "scene": scene_for(0, "train", i).to_json(), "caption": f"cap {i}"} for i in range(5)]
    batch = {"meta": metas, "image": torch.rand(5, 3, 64, 64)}
    assert TeacherModule(tok, cfg).attribute_bias is None  # weight 0 builds nothing
    module = TeacherModule(tok, cfg, attribute_weight=2.0)
    with torch.no_grad():
        module.attribute_bias.fill_(0.3)
    img = module.model.image_embedding(batch["image"])
    txt = module.model.embed_texts(attribute_texts(0, module.concepts))
    labels = concept_labels([m["scene"] for m in metas], module.concepts)
    logits = module.model.logit_scale.exp() * img @ txt.t() + 0.3
    by_hand = -torch.nn.functional.logsigmoid(labels * logits).sum() / 5
    torch.testing.assert_close(module._attribute_loss(img, batch), by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sigmoid_loss_from_labels(img, txt, labels, module.model.logit_scale,
                                                        module.attribute_bias), by_hand, rtol=1e-5, atol=1e-5)
    module._attribute_loss(img, batch).backward()
    assert module.attribute_bias.grad is not None and module.attribute_bias.grad.abs() > 0
    with pytest.raises(ValueError, match="task 'scene'"):
        module._attribute_loss(img, {"image": batch["image"], "text": ["a"] * 5})


def test_convnorm_stem_layout_and_max_pool(tmp_path):
    from arm.teacher.model import ConvNormStem

    stem = ConvNormStem(8, 16, 96)
    convs = [m for m in stem.convs if isinstance(m, torch.nn.Conv2d)]
    # full-resolution 3x3 conv, then one stride-2 conv per factor of 2 of the patch size
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [(3, 16, 1), (16, 24, 2), (24, 96, 2),
                                                                           (96, 96, 2)]
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in stem.convs) == 3
    assert not isinstance(stem.convs[-1], torch.nn.GELU)
    x = torch.rand(2, 3, 64, 64)
    assert tuple(stem(x).shape) == (2, 96, 8, 8)
    # the output is the normalised conv path plus the plain linear patchify, which keeps absolute colour
    torch.testing.assert_close(stem(x), stem.convs(x) + stem.linear(x))
    assert [c.out_channels for c in ConvNormStem(2, 16, 32).convs if isinstance(c, torch.nn.Conv2d)] == [16, 32]
    with pytest.raises(ValueError, match="power-of-two"):
        ConvNormStem(6, 16, 96)
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvNormStem(8, 12, 96)
    cfg = TeacherConfig(vocab_size=50, embed_dim=16, image_dim=32, text_dim=32, image_layers=1, text_layers=1,
                        image_heads=2, text_heads=2, stem="convnorm", pool="max")
    model = DualEncoder(cfg)
    images = torch.rand(3, 3, 64, 64)
    features = model.patch_features(images)
    assert features.shape == (3, 64, 32)
    expected = torch.nn.functional.normalize(model.image_proj(features.max(dim=1).values), dim=-1)
    torch.testing.assert_close(model.image_embedding(images), expected)
    save_teacher(model, cfg, str(tmp_path / "t"))
    torch.testing.assert_close(load_teacher(str(tmp_path / "t")).image_embedding(images), expected)
    with pytest.raises(ValueError, match="unknown pool"):
        DualEncoder(dataclasses.replace(cfg, pool="sum"))


def test_presence_loss_targets_by_hand(tmp_path):
    from arm.data.shapeworld.world import CLASSES, COLORS
    from arm.teacher.module import TeacherModule

    tok, cfg = _tiny_tokenizer_and_config(tmp_path)
    assert TeacherModule(tok, cfg).presence_head is None
    module = TeacherModule(tok, cfg, presence_weight=3.0)
    scenes = [{"objects": [{"color": "red", "class": "star"}, {"color": "blue", "class": "star"}]},
              {"objects": []}]
    img = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    target = torch.zeros(2, len(COLORS) + len(CLASSES))
    target[0, list(COLORS).index("red")] = target[0, list(COLORS).index("blue")] = 1
    target[0, len(COLORS) + CLASSES.index("star")] = 1
    logits = module.presence_head(10.0 * img)
    expected = -(target * torch.log(torch.sigmoid(logits)) + (1 - target) * torch.log(1 - torch.sigmoid(logits))).mean()
    batch = {"meta": [{"scene": s} for s in scenes]}
    torch.testing.assert_close(module._presence_loss(img, batch), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="task 'scene'"):
        module._presence_loss(img, {"text": ["a", "b"]})
    # the head is trained but not part of the exported dual encoder
    names = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert all(id(p) in names for p in module.presence_head.parameters())
    assert not any(k.startswith("presence") for k in module.model.state_dict())


def _tiny_tokenizer_and_config(tmp_path, extra_text: str = ""):
    """A text tokenizer trained on 200 ShapeWorld captions (+ ``extra_text``) and a tiny TeacherConfig."""
    import random

    from arm.data.shapeworld.scene import scene_for
    from arm.data.shapeworld.text import caption
    from arm.data.text_tokenizer import train_text_tokenizer

    tok = str(tmp_path / "tokenizer.json")
    rng = random.Random(0)
    train_text_tokenizer([caption(scene_for(0, "train", i), rng) + extra_text for i in range(200)], 300, tok)
    cfg = TeacherConfig(embed_dim=16, image_dim=32, text_dim=32, image_layers=1, text_layers=1, image_heads=2,
                        text_heads=2)
    return tok, cfg


def test_bucketed_text_embeddings_under_bf16_autocast(tmp_path):
    """bf16-mixed teacher training: the length-bucketed text embeddings come back in fp32, close to the plain
    fp32 pass of the same texts, and the loss reaches the text tower's weights."""
    import random

    from arm.data.shapeworld.scene import scene_for
    from arm.data.shapeworld.text import caption
    from arm.teacher.module import TeacherModule

    tok, cfg = _tiny_tokenizer_and_config(tmp_path)
    rng = random.Random(1)
    texts = [caption(scene_for(0, "train", i), rng) for i in range(9)]
    torch.manual_seed(int(torch.randint(0, 10_000, ())))
    module = TeacherModule(tok, cfg, attribute_weight=1.0)
    with torch.no_grad():  # 9 captions of different lengths in buckets of 4
        plain = module.model.text_embedding(*module._encode(texts))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = module._embed_texts_bucketed(texts, bucket=4)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, atol=0.03, rtol=0.0)  # bf16 keeps ~3 significant digits
    metas = [{"key": f"k{i}", "scene": scene_for(0, "train", i).to_json(), "caption": texts[i]} for i in range(4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module._train_loss({"meta": metas, "image": torch.rand(4, 3, 64, 64)})
    loss.backward()
    assert torch.isfinite(loss) and module.model.token_embed.weight.grad.abs().sum() > 0

