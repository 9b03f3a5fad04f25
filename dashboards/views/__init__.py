"""One module per dashboard view; each has `render(handle, others)`. The sidebar lists VIEWS in order.

The view modules load when first shown (the ablation view needs torch, the others only numpy), so
this file names them and imports none.
"""

VIEWS = {"Timeline": "timeline", "Run overview": "overview", "Walkthrough": "walkthrough", "Attention": "attention", "Head metrics": "heads",
         "Residual stream": "residual", "Gradients": "gradients", "Ablation": "ablation", "Probes": "probes",
         "Health": "health", "Induction": "induction", "Features": "features", "Sweep": "sweep"}
COMPARED = ("attention", "heads", "residual", "gradients", "ablation")  # drawn side by side by views/compare.py
