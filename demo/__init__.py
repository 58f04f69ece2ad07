"""The quick-start demo (``make run``); see demo/run.py."""
