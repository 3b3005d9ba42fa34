"""The tiny AR model trained with FSDP2 (``ModelParallelStrategy``, 2 CPU processes over gloo) matches one process.

The tokenizer's FSDP test (``test_fsdp_tokenizer``) and ``fsdp_runs`` explain the set-up; here it runs
``arm ar fit`` on ``experiments/ar/tiny.yaml`` with what the cluster YAMLs use: ``bf16-mixed``, activation
checkpointing (FSDP run only: recomputation repeats the same arithmetic), gradient clipping at 1.0 (the norm is
taken over the sharded, already averaged gradients) and ``arm.parallel.parallelize`` from ``ARModule``. The
code stream's length bucketing is off (``bucket_pool 1``) so that a batch is a fixed run of consecutive samples
in both set-ups; its task draws are seeded per (sample, epoch), the same in both.

Resume. Both set-ups stop at step 2 and resume from their checkpoint. Measured: a run resumed at an epoch boundary
trains its next epoch on the *previous* epoch's task draws (``trainer.current_epoch`` is 1, but the code stream
is started while it still reads 0), so a resumed run differs from an uninterrupted one from step 2 on (loss
8.798 instead of 8.812 here), in one process as in two. That is the data stream's resume behaviour, not
sharding; the tokenizer's FSDP test, whose batches do not depend on the epoch, compares against an
uninterrupted run.

Tolerance: ``LOSS_RTOL = 1e-5``, as for the tokenizer. bf16 autocast rounds the matmuls, but the same matmuls of
the same numbers in both set-ups; only the two-way gradient average is ordered differently, in fp32. Measured
(2026-11-28): the four per-step losses are identical to the last bit.
"""

from __future__ import annotations

from functools import partial

import pytest

from tests.integration.fsdp_runs import (
    ROOT,
    assert_losses_match,
    checkpoint_args,
    read_losses,
    recorder_args,
    run_in_process,
    train_sharded_and_resume,
    write_rank_shards,
)
from tests.integration.test_ar_fit import parts  # noqa: F401  (the tiny tokenizer export and its code shards)

pytestmark = pytest.mark.dist

TINY = str(ROOT / "experiments/ar/tiny.yaml")
LOSS_RTOL = 1e-5


def _fit(tiny_world, parts, out, train_shards, *extra):  # noqa: F811
    return ["fit", "--config", TINY, "--data.data_dir", str(parts / "codes"), "--data.train_shards", train_shards,
            "--data.shuffle_buffer", "0", "--data.bucket_pool", "1", "--data.batch_size", "8",
            "--model.tokenizer_path", str(tiny_world / "tokenizer.json"),
            "--model.tokenizer_export", str(parts / "tokenizer"), "--model.export", "false",
            "--model.code_colours", str(parts / "codes" / "train" / "code_colours.safetensors"),
            "--trainer.precision", "bf16-mixed", "--trainer.default_root_dir", str(out), *extra]


@pytest.mark.parametrize("options", [("--model.code_factors", "false", "--model.code_colours", "null"),
                                     pytest.param((), marks=pytest.mark.slow)], ids=["plain", "code_factors"])
def test_fsdp2_two_processes_match_one_process_and_resume(tiny_world, parts, tmp_path, options):  # noqa: F811
    """The YAML's code factors over FSQ coordinates and code colours (root-level parameters used in and outside the
    forward) shard like the embedding."""
    shards = write_rank_shards(parts / "codes" / "train", tmp_path / "shards")
    cli = "arm.ar.cli"
    fit = partial(_fit, tiny_world, parts)
    # The reference stops and resumes at step 2 too: a resumed run re-reads its first epoch's task draws (see
    # the module docstring), in one process as in two.
    ref_ckpt = tmp_path / "ref_ckpt"
    reference = ["--trainer.accumulate_grad_batches", "2", "--trainer.limit_val_batches", "0",
                 *checkpoint_args(ref_ckpt)]
    run_in_process(cli, fit(tmp_path / "ref", shards["reference"], "--trainer.max_steps", "2", *options,
                            *reference, *recorder_args(tmp_path / "ref_first.json")))
    run_in_process(cli, fit(tmp_path / "ref", shards["reference"], "--trainer.max_steps", "4", *options,
                            *reference, *recorder_args(tmp_path / "ref_resumed.json"),
                            "--ckpt_path", str(ref_ckpt / "last.ckpt")))
    sharded = train_sharded_and_resume(cli, partial(_fit, tiny_world, parts, tmp_path / "fsdp"), shards["ranks"],
                                       tmp_path, "--model.activation_checkpointing", "true", *options)
    ref = {**read_losses(tmp_path / "ref_first.json"), **read_losses(tmp_path / "ref_resumed.json")}
    assert_losses_match(sharded, ref, LOSS_RTOL)
