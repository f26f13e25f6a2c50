"""The lab catalog: one folder per lab, plain Python (no Django, no Celery).

See docs/authoring-labs.md for the folder format and labs/catalog.py for the loader.
"""
