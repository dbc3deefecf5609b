"""The index stage: annotate every supporting sample's skills with the teacher, embed, and store the
pool in LanceDB with a BM25 index on the skills and a vector index (docs/method.md section 1, steps 4-5).

``edray index --config jobs/index.yaml``; queries go through :func:`edray.index.search.search`.
"""
