"""Peer-to-peer networking: connections, wire frames, gossip, catch-up, peer status."""
