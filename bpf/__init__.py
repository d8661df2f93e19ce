"""The BPF C sources, installed as package data for BCC to compile at start."""
