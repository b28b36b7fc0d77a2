"""Tasks beyond labels: extraction and generation, measured like classification (see ``base``)."""
