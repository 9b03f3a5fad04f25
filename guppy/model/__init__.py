"""The model: a pure transformer whose every activation passes a named hook point.

    transformer.py  GuppyLM: embedding, blocks, unembedding; the shape legend
    hooks.py        HookPoint, run_with_hooks / run_with_cache, ActivationCache
    positional.py   sinusoidal and rotary position encodings
    generate.py     sampling with a KV cache
    ablate.py       zero / mean / resample ablation of heads, MLPs and layers
"""
