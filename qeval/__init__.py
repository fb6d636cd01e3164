"""qeval: is this quantized model safe to release instead of the full-precision one?"""

from qeval.util.versions import QEVAL_VERSION as __version__  # noqa: F401 - qeval.__version__


def __getattr__(name: str):
    # `qeval.load_run` (the public way to read a run directory), imported on first use so that
    # `import qeval` stays light and free of import cycles.
    if name == "load_run":
        from qeval.rundir.read import load_run

        return load_run
    raise AttributeError(f"module 'qeval' has no attribute {name!r}")
