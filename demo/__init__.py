"""``make demo`` / ``python -m demo``: the whole NS-Net pipeline end to end on synthetic data.

The model it trains is a demonstration of the pipeline (random-init ``nsnet-tiny`` on procedurally
generated images), not a detector of real AI-generated images. See docs/demo.md.
"""
