"""The trained head: its data, folds, fit, thresholds, veto, open-set figures, choice of candidate, the bundle it
ships in and the report and model card that describe it (`custom-convert head`, used by `default-bundle`).
"""
