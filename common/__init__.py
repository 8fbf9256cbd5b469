"""What every other package shares, importing none of them: keypoint layout and pose tools,
the VAE's geometry, video I/O and the atomic file writer (docs/ARCHITECTURE.md, "Layers")."""
