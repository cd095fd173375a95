"""Localisation metrics, result files, plots and query protocols."""
