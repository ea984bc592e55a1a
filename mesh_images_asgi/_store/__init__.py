"""The image store: the interface, the embedded and S3 stores, the factory."""
