"""Health of a training run: always-on signals, spikes, divergence forensics.

    signals.py    per-layer numbers cheap enough to leave on
    forensics.py  what the last steps looked like, and which tensor broke first
    watchdog.py   the trainer's always-on observer
    files.py      health and forensics files: writers and readers (no torch)
"""
