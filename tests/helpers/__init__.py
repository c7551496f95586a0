"""Test helpers every suite uses: tiny models, settings profiles, isolation, processes."""
