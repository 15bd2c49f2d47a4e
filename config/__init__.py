"""Settings (settings.py): defaults < optional settings file < environment variables."""
