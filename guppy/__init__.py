"""guppy: a tiny fish language model whose training you can watch from the inside.

    import guppy
    run = guppy.open_run("runs/demo")   # the public API for reading runs (see guppy.runs)
"""

__version__ = "0.1.0"
__all__ = ["open_run", "Run", "RunError"]


def __getattr__(name: str):
    # lazy: `import guppy` stays cheap for the command-line tools that never read a run
    if name in __all__:
        from guppy import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'guppy' has no attribute {name!r}")
