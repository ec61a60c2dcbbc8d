"""bionas.manifests"""
