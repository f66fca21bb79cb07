"""met2net: distributed training of the Met²Net weather-forecasting model."""

__version__ = "0.1.0"
