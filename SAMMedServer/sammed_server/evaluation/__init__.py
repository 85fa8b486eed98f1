"""Metrics, prompt simulation and reports."""
