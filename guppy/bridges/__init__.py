"""Other tools' formats, both ways.

    guppylm_format.py    GuppyLM's checkpoint format: state-dict keys, config, files
    guppylm_import.py    `guppy-import`: GuppyLM checkpoints into a guppy run folder
    export.py            `guppy-export`: GuppyLM, ONNX, transformers
    transformer_lens.py  `to_transformer_lens`: the same weights, the same hook names
"""
