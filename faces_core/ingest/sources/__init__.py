"""Dataset sources. Each parser returns records plus rejected items (a ParseResult)."""
