"""Small utilities shared by every stage (atomic writes, logging, hashing)."""
