"""The `glccl` command (`cli.py`) and one module per offline job: synth, train, extract, index, serve, demo."""
