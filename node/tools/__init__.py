"""Tools people run (CLI, wallet, client, cluster, devnet, demo, bench); nothing in the node imports
this package.
"""
