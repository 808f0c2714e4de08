"""Benchmarks on labelled data: MoNuSeg nuclei, folders of labelled tiles."""
