"""The dashboard: JSON API, server-sent events and the static single-page app (webui/static)."""
