"""Automatic multi-organ segmentation with adapted SAM encoders: H-SAM (``hsam``), MA-SAM (``masam``) and the
decoder-only baseline (``baseline``), trained on cached frozen-stem features (``stem``, ``features``, ``data``,
``training``, ``jobs``), stored as ``auto_models`` artefacts (``store``) and applied to volumes (``inference``)."""
