"""The shop: an application of its own that uses jobqueue as an installed package."""
