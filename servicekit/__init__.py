"""Plumbing shared by every image-mirror server: gRPC bootstrap, errors, SQLite, paging."""
