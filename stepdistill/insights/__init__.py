"""`stepdistill inspect`: know your rationales before training on them (a cache of `generate` or a task's own
teacher outputs): status and failures, agreement with gold, lengths in student tokens, label leakage, duplicates,
self-consistency, equations, tokens and cost.

Modules: ``items`` (reading caches / task data into items), ``measures`` (every figure, pure), ``near_duplicates``
(MinHash LSH), ``report`` (the folder), ``command`` (the CLI); token counts come from ``experiments.tokens``.
Nothing is imported here, so ``stepdistill --help`` stays fast.
"""
