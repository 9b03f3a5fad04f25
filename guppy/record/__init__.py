"""Recording: what a snapshot measures on the watch set, written to HDF5.

    recorder.py     the Recorder callback: snapshots during training
    measures.py     one small class per snapshot measure
    head_scores.py  head and residual maths shared by recorder, probes and dashboard
    posthoc.py      `guppy-record`: snapshots after the fact from checkpoints
"""
