"""``compile --quantize int8 --plot-sensitivity layers.png``: the accuracy guard's per-layer
sensitivity as a sorted bar chart."""

from __future__ import annotations

import os
from pathlib import Path

from relaycomp.compiler.figures import pyplot, save_figure
from relaycomp.errors import RelaycompError


def plot_sensitivity(report: dict, path: str | os.PathLike) -> Path:
    """Bars: what each int8 layer recovers (accuracy drop, else cosine) when it alone goes back
    to float, most sensitive first; red bars are the layers the guard returned to float.
    ``report`` is the quantize report's JSON form (the manifest's ``report.quantize``)."""
    layers = [la for la in report.get("layers", []) if "sensitivity" in la]
    if not layers:
        raise RelaycompError(
            "no per-layer sensitivity to plot: the accuracy guard measures it only when the "
            "all-int8 build loses more than --max-accuracy-drop",
            hint="it is measured when the all-int8 build loses more than "
                 "--max-accuracy-drop on the --eval data")
    key = ("drop_recovered" if any(la["sensitivity"]["drop_recovered"] for la in layers)
           else "cosine_recovered")
    layers = sorted(layers, key=lambda la: la["sensitivity"][key], reverse=True)
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.5))
    axes.bar(range(len(layers)), [la["sensitivity"][key] for la in layers],
             color=["tab:red" if la["mode"] == "float" else "tab:blue" for la in layers])
    axes.set_xticks(range(len(layers)), [la["name"][:24] for la in layers], rotation=75,
                    fontsize=7)
    what = "accuracy drop" if key == "drop_recovered" else "cosine"
    axes.set(ylabel=f"{what} recovered with the layer in float",
             xlabel="layer, most sensitive first (red: returned to float)",
             title="int8 per-layer sensitivity")
    return save_figure(figure, path)
