"""bionas.shards"""
