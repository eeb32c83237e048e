"""Sharing a trained model: one zip file (:mod:`udavae.export.archive`) and a MONAI bundle
(:mod:`udavae.export.bundle`, whose udavae steps are :mod:`udavae.export.bundle_runtime`).

See docs/reference/export.md.
"""
