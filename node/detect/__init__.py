"""Admission screening: detector wiring, sender history, quarantine. No asyncio, no aiohttp."""
