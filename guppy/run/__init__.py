"""The run folder: defined once, written by the trainer and the recorders, read by everything else.

    format.py      every file name, snapshot key and hook-name rule (the schema)
    writer.py      run.json, metrics.csv, atomic writes
    reader.py      `guppy.open_run`: the one way tools read a run
    checkpoint.py  weights and training state as safetensors
    watch_set.py   the fixed inputs every snapshot is measured on
    compare.py     `guppy.compare_runs`: several runs side by side
"""
