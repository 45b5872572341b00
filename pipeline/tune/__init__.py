"""``package-validate tune``: the fastest serving setting that keeps every answer.

windows  stability windows: a point counts when consecutive windows agree (pure)
search   the guided search and the grid over a point's measurement, and the choice (pure)
apply    serving a point: the archive's model-config.yaml rewritten per point, and TorchServe
         restarted or the model re-registered (model API on for tune only, loopback, token)
versus   the head-to-head: default, recommendation and grid's best in interleaved rounds (pure)
session  the whole tune: prepare, package, the in-process limit, each point measured, the head-to-head
report   tune.json, report.html (table, throughput-p99 plot), the model-config.yaml and spec fragment
"""
