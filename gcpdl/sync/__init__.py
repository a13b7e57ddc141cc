"""`gcpdl sync`: bucket-to-disk dataset sync that is resumable and CRC32C-verified.

Data flows one way: url (parse) -> listing (stream pages of small records) -> plan (filter,
safe paths, skip what the state says is done) -> transfer (pooled raw GETs, ranged slices) ->
verify (CRC32C) -> rename into place -> state (SQLite manifest) -> progress callback.
``engine.run_sync`` ties them together and returns a ``SyncSummary``.
"""
