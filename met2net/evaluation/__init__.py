"""Evaluation of trained Met²Net models: scores in physical units against baselines, forecasts as netCDF, plots."""
