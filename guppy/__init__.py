"""guppy: a tiny fish language model whose training you can watch from the inside.

    import guppy
    run = guppy.open_run("runs/demo")            # read a run: metrics, snapshots, activations, models
    cmp = guppy.compare_runs("runs/lr-study")    # several runs or a sweep side by side
    model = run.model(run.checkpoint_steps[-1])  # a GuppyLM at any checkpoint step
    e = guppy.explain(run, "hi guppy", step=64)  # how it computed its reply: heads, MLPs, logit lens
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))

The names below are the public surface: a notebook or another tool imports them from `guppy`
itself. The subpackages, in the order data flows through them (docs/architecture.md):

| subpackage | what it holds |
|---|---|
| `guppy.data` | personas, memory chats, chats and token arrays, the tokenizer, `guppy-data` |
| `guppy.model` | the transformer, its hook points, position encodings, generation, ablation |
| `guppy.train` | the training loop (`guppy-train`), callbacks, several processes, sweeps |
| `guppy.run` | the run folder: its format, writer, reader, checkpoints, watch set, comparison |
| `guppy.record` | snapshots on the watch set, what they measure, head scores, `guppy-record` |
| `guppy.health` | health signals, divergence forensics, the watchdog, their files |
| `guppy.bridges` | GuppyLM's format, `guppy-import`, `guppy-export`, TransformerLens |
| `guppy.analysis` | the probe scripts' runner and maths, memory-chat recall, `explain` |

Every name is imported lazily, so `import guppy` stays cheap for the command-line tools.
"""

__version__ = "0.1.0"

# public name -> the module that defines it
_HOME = {
    # reading runs
    "open_run": "guppy.run.reader", "Run": "guppy.run.reader", "RunError": "guppy.run.reader",
    "compare_runs": "guppy.run.compare", "Comparison": "guppy.run.compare",
    # the model
    "GuppyLM": "guppy.model.transformer", "ModelConfig": "guppy.config", "TrainConfig": "guppy.config",
    "model_preset": "guppy.config", "load_model": "guppy.run.checkpoint",
    "HookPoint": "guppy.model.hooks", "ActivationCache": "guppy.model.hooks",
    "generate": "guppy.model.generate",
    "ablate": "guppy.model.ablate", "ablation_hooks": "guppy.model.ablate",
    "each_site_ablated": "guppy.model.ablate", "each_head_ablated": "guppy.model.ablate",
    # data
    "ChatTokenizer": "guppy.data.tokenizer", "load_persona": "guppy.data.persona",
    "DataConfig": "guppy.data.dataset", "load_dataset": "guppy.data.dataset",
    # explaining one reply
    "explain": "guppy.analysis.explain", "Explanation": "guppy.analysis.explain",
    # what developed in a run
    "timeline": "guppy.analysis.timeline", "TimelineSettings": "guppy.analysis.timeline",
    "LLCSettings": "guppy.analysis.llc",
    # other tools
    "to_transformer_lens": "guppy.bridges.transformer_lens",
    "persona_eval": "guppy.evaluate",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'guppy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
