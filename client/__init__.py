"""`stillmoving`: a command-line client of the stillmoving HTTP API (httpx + tqdm; no torch)."""
