"""The models: the four variants, backends and dtypes, loading, the processor's inputs and the lean forward."""
