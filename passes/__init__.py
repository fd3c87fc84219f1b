"""Passes: named pure functions Graph -> Graph (folding, fusion, quantization, partitioning).

Takes a verified kiln Graph and gives a verified kiln Graph. The pass manager and the pipeline
arrive with the pass-pipeline issue; until then `kiln.compile` plans the captured graph as is.
"""
