"""Corral session store: per-session, per-model conversations in MongoDB."""
