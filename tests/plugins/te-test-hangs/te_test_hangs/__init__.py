"""Blocks forever at import: te must give up on it after TE_PLUGIN_IMPORT_TIMEOUT seconds."""

import threading

threading.Event().wait()
