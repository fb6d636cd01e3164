"""qeval: is this quantized model safe to release instead of the full-precision one?"""

from qeval.util.versions import QEVAL_VERSION as __version__  # noqa: F401 - qeval.__version__


def __getattr__(name: str):
    # The public API, imported on first use so that `import qeval` stays light and free of import
    # cycles: `qeval.compare(...)` / `qeval.calibrate(...)` (the functions `qeval compare` and
    # `qeval calibrate` call) and `qeval.load_run` (the way to read a run directory).
    if name == "load_run":
        from qeval.rundir.read import load_run

        return load_run
    if name in ("compare", "calibrate"):
        from qeval.run import app

        return getattr(app, name)
    raise AttributeError(f"module 'qeval' has no attribute {name!r}")
