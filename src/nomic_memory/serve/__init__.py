"""The resident search service: an HTTP API and its web page over one store table."""
