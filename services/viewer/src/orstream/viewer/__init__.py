"""Viewer: the browser app's static files, and a headless WHEP probe for measurements."""
