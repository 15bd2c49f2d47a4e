"""Settings: class defaults < optional settings file < environment variables."""
