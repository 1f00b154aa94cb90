"""Run-time services around the training loop, none of them numerics:

    rundir.py      the run directory (naming, reuse, which checkpoint to resume)
    resume.py      a resumed run's config: the one it saved, the command line's changes checked
    checkpoint.py  atomic run checkpoints (safetensors + JSON, never pickle)
    metrics.py     metrics.jsonl (+ W&B) per step
    report.py      metrics.jsonl -> PNGs + HTML (`python -m rlhf_exact.plot RUN_DIR`)
    cluster.py     a private local Ray that leaves nothing behind, or an existing cluster
"""
