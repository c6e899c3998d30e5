"""The global concept atlas: FAISS k-means over every supervoxel vector of a corpus, per layer
(`build`), the search over them (`search`), and `python -m pipeline.atlas query` (see
`pipeline.stages.atlas` for how the stage schedules it)."""
