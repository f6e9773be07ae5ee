"""The JSON-RPC 2.0 and websocket face of a node, over the NodeService interface."""
