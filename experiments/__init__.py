"""Recipes and figure scripts: they use the library, the library never imports them.

    python -m experiments.induction            # the induction demo's training recipe (make demo-induction)
    python experiments/article.py list         # the article's experiments as guppy-sweep lines (docs/experiments.md)
    python experiments/reference_figures.py    # the reference fish's figures (make reference-figures)
    python experiments/induction_figures.py    # the induction demo's figures
    python experiments/health_figure.py        # the divergence figure (docs/divergence.md)
"""
