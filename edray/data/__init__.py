"""Dataset readers: every supported input format normalized to edray's sample schemas, with quarantine.

``readers`` holds the Ray Data readers (:func:`edray.data.readers.read_samples`,
:func:`edray.data.readers.read_and_split`, :func:`edray.data.readers.split_batch`); ``formats`` detects a
path's format and plans its read units; ``units`` reads one unit inside a Ray task; ``json_stream`` parses
a large JSON array incrementally; ``images`` turns image entries into checked bytes; ``core`` holds the
pure normalization rules; ``quarantine`` the reasons, quarantine rows and read schema; ``dedup`` the
duplicate-id pass; ``parquet_rows`` reads small Parquet artifacts (evaluation splits, selections) into
memory; ``config`` the limits; ``job`` the ``edray data inspect`` command.
"""
