"""Deploying a trained student: an HTTP server with dynamic batching (:mod:`.server`, :mod:`.batcher`,
:mod:`.protocol`) and a standalone export folder, optionally int8 at load time (:mod:`.export`)."""
