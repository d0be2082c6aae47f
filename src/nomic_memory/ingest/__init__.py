"""Inputs: finding image files and documents, reading their pixels safely, counting their visual tokens."""
