"""The global concept atlas: FAISS k-means over every supervoxel vector of a corpus, per layer
(`build`; `pipeline.stages.atlas` schedules it). Searching a finished run's atlas is
`pipeline.run_search`, and `python -m pipeline.atlas query` (`pipeline.commands.atlas`)."""
