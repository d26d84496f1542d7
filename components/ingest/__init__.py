"""Ingest: scan a raw source, decode-check every file, write the manifest and upload images."""
