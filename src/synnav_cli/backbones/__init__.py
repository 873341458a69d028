"""Built-in backbones. Each module is a plugin registered through the same hook as third-party ones."""
