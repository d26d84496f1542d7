"""Preprocess: stratified split, resize to three channels, TFRecord shards in the store."""
