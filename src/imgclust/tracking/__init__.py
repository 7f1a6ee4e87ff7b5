"""MLflow: the only code that writes to it, and the one owner of every name used there.

``naming``: tags, parameter and metric keys, artifact names; ``store``: where the store is and how
runs, experiments and models are found; ``runs``: logging a pipeline run or a k scan;
``image_model``: the pyfunc model that clusters image files.
"""
