"""``lazyfs serve``: a long-lived service for many images (store mode, the
control socket the CLI asks, the per-layer directories a snapshotter uses)."""
