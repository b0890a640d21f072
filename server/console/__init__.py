"""The operations console (issue 12): server-rendered pages under ``/console``."""
