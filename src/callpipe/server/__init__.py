"""The FastAPI server: TeXML, /ws, /start, webhooks."""
