"""Cohort runs: auto-segment many volumes (files, folders, a CSV, a DICOMweb server) with one stored model on Ray.

``cases`` finds the cases, ``manifest`` keeps the resumable run folder, ``model`` holds the model a Ray worker
loads once, ``stages`` are the per-case read / segment / write steps, ``runner`` chains them on Ray Data and
``report`` writes the summary CSV, JSON report and contact sheet.
"""
