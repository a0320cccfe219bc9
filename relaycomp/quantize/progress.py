"""The progress bar of int8 calibration and the accuracy guard's evaluation (tqdm, on stderr).

Calibration compiles the float model with a tap on every layer input and runs it on each
calibration batch; the guard compiles a switchable copy and runs it on each held-out batch, in
float and in int8. On a large model that is a minute: one bar counts those steps (a compile is
one step, a batch run one), shown only on an interactive stderr (``disable=None``) and gone when
done (``leave=False``). The per-layer sensitivity analysis that may follow has its own bar
(:mod:`relaycomp.quantize.guard`).

::

    with calibration_bar(1 + len(batches)) as bar:
        bar.set_description_str("int8 calibration")
        ...; bar.update(1)
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def calibration_bar(steps: int) -> tqdm:
    """A bar of ``steps`` steps (a compile or a batch run each); name each phase with
    ``bar.set_description_str``."""
    return tqdm(total=steps, desc="int8", unit="step", file=sys.stderr, disable=None,
                leave=False, dynamic_ncols=True)
