"""bionas.ingest"""
