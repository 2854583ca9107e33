"""The ``nextstep`` command line, the top layer: ``app`` (the Typer application and its exit
codes) and the commands that only compose the rooms below (``commands``: train, predict and
recommend on one machine or on Dask; ``retrain``, ``demo``, ``validate``, ``ui``). Nothing below
imports it.
"""
