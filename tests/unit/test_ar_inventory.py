"""The object-inventory auxiliary loss (``arm.data.shapeworld.inventory``, ``ARModule(inventory_weight=...)``)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from arm.ar.module import ARModule
from arm.ar.sequences import EOI, collate_examples
from arm.data.codes import inventory_fields, task_example
from arm.data.shapeworld.inventory import INVENTORY_BINS, INVENTORY_HEADS, INVENTORY_PAIRS, scene_inventory
from arm.data.shapeworld.world import CLASSES, COLORS


def _scene(objects: list[tuple[str, str]]) -> dict:
    return {"objects": [{"class": c, "color": k, "size": "small", "bbox": [0, 0, 8, 8]} for k, c in objects],
            "background": "gray", "resolution": 64}


def test_inventory_counts_pairs_classes_and_colours():
    rng = random.Random()
    objects = [(rng.choice(list(COLORS)), rng.choice(CLASSES)) for _ in range(rng.randint(0, 4))]
    counts = scene_inventory(_scene(objects))
    assert len(counts) == INVENTORY_HEADS == len(COLORS) * len(CLASSES) + len(CLASSES) + len(COLORS)
    pairs = dict(zip(INVENTORY_PAIRS, counts))
    for k in COLORS:  # by hand, from the object list
        for c in CLASSES:
            assert pairs[(k, c)] == objects.count((k, c))
    classes = counts[len(INVENTORY_PAIRS): len(INVENTORY_PAIRS) + len(CLASSES)]
    colours = counts[len(INVENTORY_PAIRS) + len(CLASSES):]
    assert classes == [sum(o[1] == c for o in objects) for c in CLASSES]
    assert colours == [sum(o[0] == k for o in objects) for k in COLORS]
    assert max(counts) < INVENTORY_BINS


def test_inventory_rejects_what_it_cannot_count():
    with pytest.raises(ValueError, match="not a ShapeWorld class"):
        scene_inventory(_scene([("red", "hexagon")]))
    with pytest.raises(ValueError, match="at most 4"):
        scene_inventory(_scene([("red", "circle")] * 5))
    with pytest.raises(KeyError, match="objects"):
        scene_inventory({"background": "gray"})


def _module(tokenizer: str, **kwargs) -> ARModule:
    module = ARModule(tokenizer, None, preset="tiny", num_image_codes=32, image_grid=8, **kwargs)
    module.configure_model()
    return module


def _sample(generator: torch.Generator, source: dict, target: dict) -> dict:
    codes = torch.randint(0, 32, (64,), generator=generator).numpy()
    meta = {"scene": source, "caption": "a red square", "geneval": {"prompt": "a photo of a red square"},
            "vqa": [{"question": "How many squares are there?", "answer": "1", "type": "count"}],
            "edit": {"instruction": "make the square blue", "target_scene": target}}
    return {"key": "k", "meta": meta, "codes": codes, "edit_codes": codes[::-1].copy()}


def test_fields_point_at_each_image_blocks_last_code(tiny_world):
    module = _module(str(tiny_world / "tokenizer.json"))
    builder, eoi = module.builder, module.layout.special_id(EOI)
    source, target = _scene([("red", "square")]), _scene([("blue", "square"), ("red", "circle")])
    sample = _sample(torch.Generator().manual_seed(0), source, target)
    for task, scenes in (("t2i", [source]), ("vqa", [source]), ("caption", [source]), ("edit", [source, target])):
        example = task_example(builder, sample, task, 0, 0)
        pos, counts = inventory_fields(example, eoi)
        ends = [p for p in range(len(example.ids) - 1) if example.ids[p + 1] == eoi]
        assert pos.tolist() == ends + [-1] * (2 - len(ends))
        assert all(example.ids[p] >= module.layout.image_offset for p in ends)  # a code, right before <eoi>
        for i, scene in enumerate(scenes):
            assert counts[i].tolist() == scene_inventory(scene)
    # an edit whose source is dropped (CFG) keeps the target's inventory alone
    dropped = builder.edit(sample["codes"], "make it blue", sample["edit_codes"], drop_image=True)
    dropped.scenes = [target]
    pos, counts = inventory_fields(dropped, eoi)
    assert pos[1] == -1 and counts[0].tolist() == scene_inventory(target)
    dropped.scenes = [source, target]
    with pytest.raises(ValueError, match="1 image block"):
        inventory_fields(dropped, eoi)


def test_module_adds_the_weighted_inventory_cross_entropy(tiny_world):
    tokenizer = str(tiny_world / "tokenizer.json")
    with pytest.raises(ValueError, match="inventory_weight must be >= 0"):
        ARModule(tokenizer, None, preset="tiny", num_image_codes=32, image_grid=8, inventory_weight=-1.0)
    plain = _module(tokenizer)
    assert plain.inventory_head is None
    module = _module(tokenizer, inventory_weight=0.5)
    module.model.load_state_dict(plain.model.state_dict())
    generator = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    rng = random.Random()
    scenes = [_scene([(rng.choice(list(COLORS)), rng.choice(CLASSES)) for _ in range(rng.randint(0, 4))])
              for _ in range(2)]
    sample = _sample(generator, *scenes)
    examples = [task_example(module.builder, sample, t, 0, 0) for t in ("t2i", "vqa", "edit")]
    batch = collate_examples(examples, module.tokenizer.pad_id)
    with pytest.raises(ValueError, match="data.inventory"):
        module._losses(batch)
    eoi = module.layout.special_id(EOI)
    fields = [inventory_fields(e, eoi) for e in examples]
    batch["inventory_pos"] = torch.stack([f[0] for f in fields])
    batch["inventory"] = torch.stack([f[1] for f in fields])
    module.eval()
    plain.eval()
    with torch.no_grad():
        loss, means, nll = module._losses(batch)
        plain_loss, _, _ = plain._losses(batch)
        # by hand: the head on the hidden state of each image's last code, cross-entropy averaged over every count
        hidden = module.model(input_ids=batch["ids"][:, :-1])
        logits, targets = [], []
        for b in range(len(examples)):
            for p, c in zip(*fields[b]):
                if p >= 0:
                    logits.append(module.inventory_head(hidden[b, p]).view(INVENTORY_HEADS, INVENTORY_BINS))
                    targets.append(c)
        want = F.cross_entropy(torch.cat(logits), torch.cat(targets))
    assert len(targets) == 4  # t2i 1, vqa 1, edit 2
    assert torch.allclose(means["inventory"], want, atol=1e-5)
    assert torch.allclose(loss, plain_loss + 0.5 * want, atol=1e-5)
    right = sum(bool((lg.argmax(-1) == t).all()) for lg, t in zip(logits, targets))
    assert int(nll["inventory_right"]) == right and int(nll["inventory_n"]) == 4
    # inventory_images "read": only the images the sequence reads (the vqa image, the edit's source)
    module.hparams.inventory_images = "read"
    with torch.no_grad():
        _, read_means, read_nll = module._losses(batch)
    read = [1, 2]  # logits / targets order: t2i image, vqa image, edit source, edit target
    want_read = F.cross_entropy(torch.cat([logits[i] for i in read]), torch.cat([targets[i] for i in read]))
    assert torch.allclose(read_means["inventory"], want_read, atol=1e-5) and int(read_nll["inventory_n"]) == 2
    t2i_only = {k: (v[:1] if k != "task" else v[:1]) for k, v in batch.items()}
    with torch.no_grad():
        _, none_means, none_nll = module._losses(t2i_only)
    assert float(none_means["inventory"]) == 0.0 and int(none_nll["inventory_n"]) == 0
    with pytest.raises(ValueError, match="inventory_images must be"):
        ARModule(tokenizer, None, preset="tiny", num_image_codes=32, image_grid=8, inventory_images="drawn")
    # the head trains with the model; the export holds the decoder alone
    opt = module.configure_optimizers()["optimizer"]
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in held for p in module.inventory_head.parameters())
    assert not any(k.startswith("inventory") for k in module.model.state_dict())
