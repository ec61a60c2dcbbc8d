"""bionas.trainer"""
