"""guppy: a tiny fish language model whose training you can watch from the inside.

    import guppy
    run = guppy.open_run("runs/demo")   # the public API for reading runs (see guppy.runs)
    cmp = guppy.compare_runs("runs/lr-study")   # several runs or a sweep side by side (see guppy.compare)
"""

__version__ = "0.1.0"
__all__ = ["open_run", "Run", "RunError", "compare_runs", "Comparison"]
_HOME = {"open_run": "runs", "Run": "runs", "RunError": "runs", "compare_runs": "compare", "Comparison": "compare"}


def __getattr__(name: str):
    # lazy: `import guppy` stays cheap for the command-line tools that never read a run
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"guppy.{_HOME[name]}"), name)
    raise AttributeError(f"module 'guppy' has no attribute {name!r}")
