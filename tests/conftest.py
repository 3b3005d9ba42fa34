"""Fixtures shared by the test suite."""

import pytest

from arm.data.shapeworld.writer import write_world
from arm.data.text_tokenizer import build_text_tokenizer


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A 64/32-sample ShapeWorld (``ROOT/world``) and its text tokenizer (``ROOT/tokenizer.json``), built once.

    Tests that train write under their own subfolder of ROOT, never into ``world``.
    """
    root = tmp_path_factory.mktemp("tiny")
    write_world(str(root / "world"), num_train=64, num_val=32, num_test=0, seed=0, shard_size=32, workers=1,
                bench=False, progress=False)
    build_text_tokenizer(str(root / "world"), str(root / "tokenizer.json"), vocab_size=300)
    return root
