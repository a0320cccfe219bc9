"""``relaycomp passes [--target T] [--json]``: the pipeline's stages and their passes, the
features' passes where they plug in, and the registered passes available with ``--pass``."""

from __future__ import annotations

import json

from relaycomp.cli.messages import warning


def pipeline_listing(target: str) -> dict:
    """Stages (each with its passes, feature passes marked) and the passes outside them."""
    from relaycomp.compiler.features import FEATURES
    from relaycomp.compiler.pipeline import default_stages
    from relaycomp.compiler.plugins import load_entry_points
    from relaycomp.registry import PASSES
    from relaycomp.targets import resolve

    _, broken = load_entry_points()
    for problem in broken:
        warning(problem)
    kind = resolve(target).kind
    stages = default_stages(kind)
    features = {f.placement.name: f for f in map(FEATURES.get, FEATURES) if f.placement}
    in_pipeline = {name for stage in stages for name in stage.passes} | set(features)
    listing = {"target": target, "kind": kind, "stages": [], "available": []}
    for stage in stages:
        entries = [{"name": name, "description": PASSES.get(name).description, "feature": None}
                   for name in stage.passes]
        entries += [{"name": name, "description": PASSES.get(name).description,
                     "feature": feature.name}
                    for name, feature in features.items()
                    if feature.placement.stage == stage.name and kind in PASSES.get(name).kinds]
        listing["stages"].append({"name": stage.name, "passes": entries})
    listing["available"] = [
        {"name": info.name, "stage": info.stage, "description": info.description}
        for info in map(PASSES.get, PASSES.names())
        if info.name not in in_pipeline and kind in info.kinds]
    return listing


def list_passes(args) -> int:
    """Print the listing as text or, with ``--json``, as one JSON document."""
    listing = pipeline_listing(args.target)
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for stage in listing["stages"]:
        print(f"{stage['name']}:")
        for entry in stage["passes"]:
            feature = f"(with the {entry['feature']} feature) " if entry["feature"] else ""
            print(f"  {entry['name']:30} {feature}{entry['description']}")
    if listing["available"]:
        print("available with --pass NAME:")
        for info in listing["available"]:
            print(f"  {info['name']:30} [{info['stage']}] {info['description']}")
    return 0
