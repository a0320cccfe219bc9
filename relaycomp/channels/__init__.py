"""The channel dependency graph underneath pruning (as Torch-Pruning's DependencyGraph): which
tensors' channels must be cut together, over an ONNX graph or a Relax module, and the rewrite
that slices a plan (group -> kept channels) into the model."""
