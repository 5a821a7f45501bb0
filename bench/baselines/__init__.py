"""Plain TRL scripts doing the same work as the project's stages, the reference of the throughput comparisons."""
