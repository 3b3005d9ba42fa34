"""``arm.lightning_cli``: which model options a resumed run changes (the resume itself: test_tokenizer_fit.py)."""


def test_changed_model_options_compares_plain_values():
    """Namespaces (how jsonargparse holds a dataclass option) compare as dicts, tuples as lists; private keys and
    options the configuration does not set are left out."""
    from jsonargparse import Namespace

    from arm.lightning_cli import changed_model_options

    stored = {"lr": 1e-3, "betas": [0.9, 0.95], "projection": {"dim": 128, "num_layers": 2}, "_instantiator": "x",
              "gone": 1}
    same = Namespace(lr=1e-3, betas=(0.9, 0.95), projection=Namespace(dim=128, num_layers=2))
    assert changed_model_options(stored, same) == {}
    other = Namespace(lr=2e-3, betas=(0.9, 0.99), projection=Namespace(dim=64, num_layers=2))
    assert changed_model_options(stored, other) == {
        "lr": (1e-3, 2e-3), "betas": ([0.9, 0.95], [0.9, 0.99]),
        "projection": ({"dim": 128, "num_layers": 2}, {"dim": 64, "num_layers": 2})}
