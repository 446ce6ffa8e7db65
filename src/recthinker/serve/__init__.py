"""HTTP API and web page for the RecThinker agent (`recthinker serve`); see `recthinker.serve.app`."""
