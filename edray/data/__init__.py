"""Dataset readers: every supported input format normalized to edray's sample schemas, with quarantine.

``readers`` holds the Ray Data readers (:func:`edray.data.readers.read_samples`,
:func:`edray.data.readers.read_and_split`, :func:`edray.data.readers.split_batch`), ``core`` the pure
normalization rules, ``config`` the limits, ``job`` the ``edray data inspect`` command.
"""
