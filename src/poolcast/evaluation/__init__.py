"""Judging the forecasts: backtests, headroom bounds, engine parity and research models."""
