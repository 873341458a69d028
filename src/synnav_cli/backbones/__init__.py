"""Built-in backbones: each module is a plugin, registered through the hook third parties use."""
