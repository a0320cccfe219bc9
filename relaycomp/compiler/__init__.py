"""The compiler driver: staged pipeline and pass runner, build, manifest, plugins, features."""
