"""Shared helpers: metrics, Gaussian fitting, plots, loggers and CLI plumbing."""
