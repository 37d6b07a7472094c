"""poolcast: daily DeFi stablecoin pool metrics and APY forecasts, locally or on Spark."""

__version__ = "0.1.0"
