"""Analyses of a run's models, shared by the probe scripts in probes/, the dashboard and notebooks.

    probe_runner.py   the probe scripts' command line, snapshot steps, outputs, threads
    heldout.py        held-out chat batches and per-site ablation losses
    head_types.py     head type scores and their classification
    linear_probe.py   linear probes trained on activations
    memory_recall.py  recall on memory chats and the copy heads (RecallMonitor)
"""
