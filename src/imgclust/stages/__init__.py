"""One module per dvc.yaml stage, named like the stage: ``run()`` writes exactly the outputs
dvc.yaml lists for it, ``command`` is its thin Typer wrapper. Stages never import each other."""
