"""Data: pairing photos, the prepared layout, synthetic faces and training datasets."""
