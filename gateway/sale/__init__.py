"""The sale: inventory scripts, the per-worker availability snapshot, holds and checkout."""
